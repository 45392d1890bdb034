"""Load through a real server with bench.loadgen: at twice the service's capacity the queue
fills, the extra requests get RESOURCE_EXHAUSTED with RetryInfo at once, every accepted request
completes, and the server's memory stays flat over a soak.

The service is the faulty test service (the real runtime, no model) in its own process, so its
RSS is its own. The soak runs MMSERVE_SOAK_SECONDS (12 s here; `make soak` sets minutes).
Every run's loadgen summary is written to build/reliability/.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.loadgen import LoadReport, LoadSpec, percentile, run_load
from tests.reliability.faults.support import T2I, metric, metrics_text
from tests.support.servers import REPO, ServerProcess, start_process

FAULTY = "tests.reliability.faults.faulty_service"
QUEUE = 4  # max queue size: capacity is 1 running + 4 waiting
CAPACITY = QUEUE + 1
STEP_SECONDS = 0.05
STEPS = 4  # 0.2 s per job
SOAK_SECONDS = float(os.environ.get("MMSERVE_SOAK_SECONDS", "12"))
RESULTS = REPO / "build" / "reliability"


def save(name: str, report: LoadReport) -> dict[str, object]:
    summary = report.summary()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=1))
    return summary


@pytest.fixture
def overloaded(tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_process(
        FAULTY,
        ["--max-queue-size", str(QUEUE), "--step-seconds", str(STEP_SECONDS)],
        tmp_path / "server.log",
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_twice_capacity_rejects_the_excess_at_once_and_completes_the_rest(
    overloaded: ServerProcess, stream: bool
) -> None:
    assert overloaded.metrics_port is not None
    spec = LoadSpec(
        target=overloaded.target,
        capability="t2i",
        concurrency=2 * CAPACITY,
        duration_s=5.0,
        stream=stream,
        timeout_s=30,
        metrics_url=f"http://127.0.0.1:{overloaded.metrics_port}/metrics",
        pid=overloaded.process.pid,
        sample_interval_s=0.2,
        steps=STEPS,
    )
    report = await run_load(spec)
    summary = save(f"overload-{'stream' if stream else 'unary'}", report)
    codes = report.by_code()
    # Nothing but successes and rejections: no timeout, no UNAVAILABLE, no INTERNAL.
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, summary
    rejected = [c for c in report.calls if c.code == "RESOURCE_EXHAUSTED"]
    assert all(c.retry_info and c.retry_delay_s >= 0.5 for c in rejected), "RetryInfo on each"
    # The queue filled up to its limit.
    assert max(report.queue_depths()) == QUEUE, summary
    # Rejections come at once; accepted calls wait their turn (queue + run).
    rejection = report.latencies("RESOURCE_EXHAUSTED")
    accepted = report.latencies("OK")
    assert percentile(rejection, 50) < 0.1, summary
    assert percentile(rejection, 99) < 0.5, summary
    assert percentile(rejection, 99) < percentile(accepted, 50), summary
    # The device never idled: throughput is what one job at a time allows.
    assert codes["OK"] >= 0.6 * spec.duration_s / (STEPS * STEP_SECONDS), summary
    # Every accepted request completed: the server's own count of jobs and answers agrees.
    text = metrics_text(overloaded.metrics_port)
    method = f"/{T2I}/{'StreamTextToImage' if stream else 'TextToImage'}"
    jobs = "mmserve_job_duration_seconds_count"
    assert metric(text, jobs, kind="text_to_image", state="succeeded") == codes["OK"]
    for state in ("failed", "cancelled"):
        assert metric(text, jobs, kind="text_to_image", state=state) == 0
    assert metric(text, "mmserve_requests_total", method=method, code="OK") == codes["OK"]
    assert metric(text, "mmserve_rejected_total", reason="queue_full") == len(rejected)
    assert metric(text, "mmserve_queue_depth") == 0


async def test_memory_stays_flat_over_a_soak(tmp_path: Path) -> None:
    """Real-sized outputs (a 256 KiB result and a 64 KiB output per step, like images and
    previews) at full load: the server's RSS after warm-up must not grow. Before jobs released
    their results and outputs when they ended, it grew ~1 MiB per call (+480 MiB in 15 s)."""
    # Finished jobs stay visible to GetJob for job_retention_seconds (600 s by default, at
    # most 10000, ~2 KiB each): bounded by design, but over a long soak that slow climb would
    # read as growth. With 60 s the records level off within the soak's warm-up, while a 12 s
    # CI run still sees anything a finished job keeps (it would all be retained).
    server = start_process(
        FAULTY,
        [
            "--step-seconds", "0.01", "--result-kib", "256", "--output-kib", "64",
            "--job-retention-seconds", "60",
        ],
        tmp_path / "server.log",
    )  # fmt: skip
    try:
        assert server.metrics_port is not None
        reports = []
        for stream in (False, True):
            spec = LoadSpec(
                target=server.target,
                capability="t2i",
                concurrency=3,
                duration_s=SOAK_SECONDS / 2,
                stream=stream,
                timeout_s=30,
                metrics_url=f"http://127.0.0.1:{server.metrics_port}/metrics",
                pid=server.process.pid,
                sample_interval_s=max(0.25, SOAK_SECONDS / 120),
                steps=4,
            )
            reports.append(await run_load(spec))
    finally:
        server.stop()
    for report in reports:
        assert set(report.by_code()) == {"OK"}, report.summary()
    calls = sum(len(r.calls) for r in reports)
    samples = [s for r in reports for s in r.samples if s.rss_bytes is not None]
    summary = {
        "calls": calls,
        "seconds": SOAK_SECONDS,
        "rss_mib": [round((s.rss_bytes or 0) / 2**20, 1) for s in samples],
        "open_fds": [s.open_fds for s in samples],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak-memory.json").write_text(json.dumps(summary, indent=1))
    assert calls > 100
    # Warm-up (imports, first allocations, pools) is the first quarter; then flat: the median
    # of the last tenth within 24 MiB of the median of the tenth after warm-up.
    rss = [s.rss_bytes / 2**20 for s in samples if s.rss_bytes is not None]
    window = max(3, len(rss) // 10)
    start = len(rss) // 4
    early = statistics.median(rss[start : start + window])
    late = statistics.median(rss[-window:])
    assert late - early < 24, summary
    fds = [s.open_fds for s in samples if s.open_fds is not None]
    assert max(fds[start:]) - min(fds[start:]) <= 8, summary
