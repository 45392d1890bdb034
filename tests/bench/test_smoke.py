"""The benchmark runner end to end on the tiny CLIP: `python -m bench.run --quick --capabilities
vision` starts the real server behind Envoy (and LitServe when installed), measures every cell
and writes its JSON. About 30 s on 2 cores; asserts the shape of the results, never timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUN = [sys.executable, "-m", "bench.run", "--quick", "--capabilities", "vision"]


def test_quick_vision_run_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run(
        [*RUN, "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    document = json.loads(out.read_text())
    assert document["meta"]["capabilities"]["vision"]["status"] == "ok"
    assert document["meta"]["plan"]["profile"] == "tiny"
    cells = {(c["path"], c["concurrency"]): c for c in document["cells"]}
    for path in ("in-process", "served", "served+envoy"):
        for clients in (1, 4):
            cell = cells[path, clients]
            assert cell["figures"]["throughput"] > 0
            assert len(cell["runs"]) == 2
            assert all(r["samples"] for r in cell["runs"])
    assert cells["served", 4]["figures"]["batch_max"] >= 1
    assert any(r["path"] == "served" and r["time_ratio"] for r in document["ratios"])
    goals = {g["name"]: g for g in document["goals"]}
    assert goals["vision: served 4 clients / in-process batched (4)"]["met"] in (True, False)
    assert "## 2" in done.stdout or "CPU cores" in done.stdout  # the markdown report
