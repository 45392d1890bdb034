"""Bursts of simultaneous calls straight to a capability's port, no Envoy in front.

Every call ends OK or RESOURCE_EXHAUSTED with RetryInfo, never a bare CANCELLED: grpc core used to
cancel calls that waited for the application beyond its pending-call bounds without a log line.
The server's own limit (max_concurrent_calls) answers instead, and says so in metrics and the
access log; health checks are not counted against it, so probes answer during a burst.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mmserve.t2i.v1 import t2i_pb2, t2i_pb2_grpc
from tests.reliability.faults.support import T2I, metric, metrics_text, t2i_request
from tests.support.rpc import retry_info
from tests.support.servers import ServerProcess, start_process

FAULTY = "tests.reliability.faults.faulty_service"


def _start(tmp_path: Path, *flags: str) -> Iterator[ServerProcess]:
    server = start_process(FAULTY, list(flags), tmp_path / "server.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def default_server(tmp_path: Path) -> Iterator[ServerProcess]:
    yield from _start(tmp_path)


@pytest.fixture
def limited_server(tmp_path: Path) -> Iterator[ServerProcess]:
    # Jobs of 0.5 s each and a queue big enough that only the call limit refuses.
    yield from _start(
        tmp_path,
        "--max-concurrent-calls",
        "40",
        "--max-queue-size",
        "1000",
        "--step-seconds",
        "0.5",
    )


async def _outcome(call: asyncio.Future) -> tuple[str, grpc.aio.AioRpcError | None]:
    try:
        await call
        return "OK", None
    except grpc.aio.AioRpcError as error:
        return error.code().name, error


async def test_a_burst_past_grpc_cores_pending_bounds_is_all_served(
    default_server: ServerProcess,
) -> None:
    async with grpc.aio.insecure_channel(default_server.target) as channel:
        stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
        await stub.GetModelInfo(t2i_pb2.GetModelInfoRequest(), timeout=30)
        calls = [
            _outcome(stub.GetModelInfo(t2i_pb2.GetModelInfoRequest(), timeout=60))
            for _ in range(3000)
        ]
        outcomes = await asyncio.gather(*calls)
    codes = collections.Counter(code for code, _ in outcomes)
    assert codes == {"OK": 3000}, codes


async def test_calls_past_the_limit_get_resource_exhausted_with_retry_info(
    limited_server: ServerProcess,
) -> None:
    assert limited_server.metrics_port is not None
    async with grpc.aio.insecure_channel(limited_server.target) as channel:
        stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        await stub.GetModelInfo(t2i_pb2.GetModelInfoRequest(), timeout=30)
        calls = [
            asyncio.ensure_future(_outcome(stub.TextToImage(t2i_request(steps=1), timeout=120)))
            for _ in range(200)
        ]
        # While 40 calls hold every slot, probes still answer.
        await asyncio.sleep(0.5)
        checked = await health.Check(health_pb2.HealthCheckRequest(service=T2I), timeout=5)
        assert checked.status == health_pb2.HealthCheckResponse.SERVING
        outcomes = await asyncio.gather(*calls)
        codes = collections.Counter(code for code, _ in outcomes)
        assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
        assert codes["OK"] >= 40, codes
        for code, error in outcomes:
            if code == "RESOURCE_EXHAUSTED":
                assert error is not None
                assert "max_concurrent_calls=40" in (error.details() or "")
                hint = retry_info(error)
                assert hint is not None
                assert hint.retry_delay.ToTimedelta().total_seconds() > 0
        # The next call is served once the burst has passed.
        await stub.TextToImage(t2i_request(steps=1), timeout=30)
    text = metrics_text(limited_server.metrics_port)
    assert (
        metric(text, "mmserve_rejected_total", reason="concurrency") == codes["RESOURCE_EXHAUSTED"]
    )
    log = limited_server.log()
    assert '"code": "RESOURCE_EXHAUSTED"' in log or '"code":"RESOURCE_EXHAUSTED"' in log
