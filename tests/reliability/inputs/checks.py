"""The checks every test here ends with, and the outcome bookkeeping they share."""

from __future__ import annotations

from collections.abc import Iterable

from tests.reliability.inputs.fleet import Outcome, Served
from tests.reliability.inputs.slots import normal_requests
from tests.reliability.inputs.tally import TALLY


def record(kind: str, outcome: Outcome, failed: bool = False) -> None:
    TALLY.add(kind, outcome.code.name, failed or bool(outcome.problems()))


def still_serving(served: Served, after: str) -> list[str]:
    """Problems with the server after a batch of bad input: dead, not SERVING, errors in its
    log, or a normal request that no longer succeeds (each counted as lost)."""
    problems: list[str] = []
    if not served.alive():
        return [f"{served.capability} server died after {after}:\n{served.log_tail()}"]
    if not served.serving():
        problems.append(f"{served.capability} not SERVING after {after}")
    for name, request in normal_requests(served.capability):
        outcome = served.call(name, request)
        TALLY.normal_sent += 1
        if outcome.code.name != "OK" or outcome.problems():
            TALLY.normal_lost += 1
            problems.append(f"normal request failed after {after}: {outcome}")
        job_id = outcome.metadata("mmserve-job-id")
        if job_id:
            served.pools.setdefault("job_id", []).append(job_id)
    problems.extend(f"server logged: {line}" for line in served.new_log_errors())
    return problems


def assert_clean(problems: Iterable[str]) -> None:
    found = list(problems)
    assert not found, "\n".join(found[:30]) + (
        f"\n... and {len(found) - 30} more" if len(found) > 30 else ""
    )
