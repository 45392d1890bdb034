"""bench.loadgen as a command: its report on a real server, its refusal of impossible specs,
and a soak of each real capability on its built-in model with the server's memory, open file
descriptors and threads watched: about a minute each in CI (MMSERVE_CI_SOAK_SECONDS), minutes
with MMSERVE_SOAK=1 (make soak)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bench.loadgen import LoadSpec, percentile, run_load
from tests.support.servers import REPO, ServerProcess, start_process, wait_for_health

SOAK = os.environ.get("MMSERVE_SOAK") == "1"
SOAK_SECONDS = float(os.environ.get("MMSERVE_SOAK_SECONDS", "12"))
# The load phase of each capability's soak: SOAK_SECONDS / 4 under `make soak`, else this.
CAPABILITY_SOAK_SECONDS = (
    SOAK_SECONDS / 4 if SOAK else float(os.environ.get("MMSERVE_CI_SOAK_SECONDS", "60"))
)
# What "flat" means after warm-up (the first quarter of the run): allocator and model caches
# settle, but a leak of a few hundred KiB per call, a descriptor or a thread per call shows.
RSS_GROWTH_MIB = 64
FD_GROWTH = 8
THREAD_GROWTH = 4
REAL_ARGS = {"omni": ["--asr-model", "none", "--tts-model", "none"]}
SERVING = 1


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_process(
        "tests.reliability.faults.faulty_service",
        ["--step-seconds", "0.02", "--max-queue-size", "2"],
        tmp_path / "server.log",
    )
    try:
        yield server
    finally:
        server.stop()


def loadgen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.loadgen", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_reports_throughput_latency_queue_errors_and_rss(
    faulty: ServerProcess, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    done = loadgen(
        "--target", faulty.target, "--capability", "t2i", "--concurrency", "6",
        "--duration", "2", "--stream", "--steps", "2",
        "--metrics-url", f"http://127.0.0.1:{faulty.metrics_port}/metrics",
        "--pid", str(faulty.process.pid), "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "t2i stream x6" in done.stdout
    assert "OK:" in done.stdout
    assert "RESOURCE_EXHAUSTED:" in done.stdout  # 6 callers, room for 3
    report = json.loads(out.read_text())
    summary = report["summary"]
    assert summary["ok"] > 0
    assert summary["throughput_ok_per_s"] > 0
    assert summary["latency_ok_p50_s"] <= summary["latency_ok_p99_s"]
    assert summary["queue_depth"]["max"] == 2
    assert (
        summary["with_retry_info"]["RESOURCE_EXHAUSTED"] == summary["codes"]["RESOURCE_EXHAUSTED"]
    )
    assert summary["rss_mib"]["max"] > 10
    assert len(report["calls"]) == summary["calls"]
    assert report["samples"]


def test_cli_refuses_impossible_specs() -> None:
    done = loadgen("--target", "127.0.0.1:1", "--capability", "vision", "--stream")
    assert done.returncode == 2
    assert "vision has no streaming RPC" in done.stderr


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([3.0], 99) == 3.0


def _growth(values: list[int]) -> float:
    """Median of the last tenth minus median of the tenth after warm-up."""
    window = max(3, len(values) // 10)
    start = len(values) // 4
    return statistics.median(values[-window:]) - statistics.median(values[start : start + window])


@pytest.mark.parametrize("name", ["t2i", "vl", "vision", "omni"])
async def test_real_capability_soak_keeps_memory_fds_and_threads_flat(
    name: str, tmp_path: Path
) -> None:
    server = start_process(f"services.{name}", REAL_ARGS.get(name, []), tmp_path / "server.log")
    try:
        assert server.metrics_port is not None
        async with grpc.aio.insecure_channel(server.target) as channel:
            await wait_for_health(channel, SERVING, timeout=300)
        spec = LoadSpec(
            target=server.target,
            capability=name,
            concurrency=3,
            duration_s=CAPABILITY_SOAK_SECONDS,
            stream=name != "vision",
            timeout_s=120,
            metrics_url=f"http://127.0.0.1:{server.metrics_port}/metrics",
            pid=server.process.pid,
            sample_interval_s=max(0.5, CAPABILITY_SOAK_SECONDS / 100),
            steps=2,
            max_new_tokens=8,
        )
        report = await run_load(spec)
    finally:
        server.stop()
    out = REPO / "build" / "reliability" / f"soak-{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.summary(), indent=1))
    assert set(report.by_code()) == {"OK"}, report.summary()
    assert report.by_code().get("OK", 0) > 10
    summary = report.summary()
    assert _growth([int(s / 2**20) for s in report.rss()]) < RSS_GROWTH_MIB, summary
    assert _growth(report.open_fds()) <= FD_GROWTH, summary
    assert _growth(report.threads()) <= THREAD_GROWTH, summary
