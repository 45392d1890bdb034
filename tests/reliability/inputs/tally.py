"""What the bad-input suite tried and saw, printed at the end of the run (for RELIABILITY.md):
inputs by kind, the status codes they ended with, failures, and normal requests lost."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field


@dataclass
class Row:
    count: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    failures: int = 0


@dataclass
class Tally:
    rows: dict[str, Row] = field(default_factory=lambda: defaultdict(Row))
    normal_sent: int = 0
    normal_lost: int = 0

    def add(self, kind: str, code: str, failed: bool = False) -> None:
        row = self.rows[kind]
        row.count += 1
        row.codes[code] += 1
        row.failures += int(failed)

    def lines(self) -> list[str]:
        if not self.rows:
            return []
        out = [
            "inputs tried (kind, count) | outcome codes seen | failures | lost",
            "---|---|---|---",
        ]
        for kind in sorted(self.rows):
            row = self.rows[kind]
            codes = ", ".join(f"{code} {n}" for code, n in row.codes.most_common())
            out.append(f"{kind}, {row.count} | {codes} | {row.failures} | -")
        out.append(
            f"normal requests after each batch, {self.normal_sent} | - | - | {self.normal_lost}"
        )
        return out


TALLY = Tally()
