"""A model that raises mid-job, or runs out of memory, fails only that job: the jobs queued
around it finish, the service stays SERVING, the failure is reported with the right code, and
the memory the failing job held is given back (so the next job is not starved)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from mmserve.t2i.v1 import t2i_pb2_grpc
from services.runtime.server import ServiceServer
from tests.reliability.faults.support import (
    T2I,
    metric,
    metrics_text,
    proc_rss_mib,
    read_until,
    t2i_request,
)
from tests.support.rpc import retry_info
from tests.support.servers import health_status, start_process

SERVING = 1


async def outcome(call: grpc.aio.UnaryStreamCall) -> tuple[grpc.StatusCode, list[str]]:
    """A stream's final code and the kinds of the events it got first."""
    kinds: list[str] = []
    try:
        async for event in call:
            kinds.append(event.WhichOneof("event"))
    except grpc.aio.AioRpcError as error:
        return error.code(), kinds
    return grpc.StatusCode.OK, kinds


async def test_mid_job_failures_fail_only_their_jobs(
    faulty: ServiceServer, stub: t2i_pb2_grpc.ImageGenerationServiceStub
) -> None:
    # Five jobs in the queue at once, two of which blow up after some steps ran.
    prompts = ["first", "fail-at-3", "middle", "oom-at-2", "last"]
    calls = [stub.StreamTextToImage(t2i_request(p, steps=5), timeout=30) for p in prompts]
    results = await asyncio.wait_for(asyncio.gather(*(outcome(c) for c in calls)), 30)
    by_prompt = dict(zip(prompts, results, strict=True))
    for prompt in ("first", "middle", "last"):
        code, kinds = by_prompt[prompt]
        assert code == grpc.StatusCode.OK, prompt
        assert (kinds[0], kinds[-1]) == ("accepted", "result")
    code, kinds = by_prompt["fail-at-3"]
    assert code == grpc.StatusCode.INTERNAL
    assert kinds.count("step") == 2, "it failed mid-job, after two steps were reported"
    code, kinds = by_prompt["oom-at-2"]
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert kinds.count("step") == 1
    async with grpc.aio.insecure_channel(f"127.0.0.1:{faulty.port}") as channel:
        assert await health_status(channel, T2I) == SERVING
    text = await asyncio.to_thread(metrics_text, faulty.metrics_port)
    job = "mmserve_job_duration_seconds_count"
    assert metric(text, job, kind="text_to_image", state="succeeded") == 3
    assert metric(text, job, kind="text_to_image", state="failed") == 2
    assert metric(text, "mmserve_queue_depth") == 0
    # And the next job is served normally.
    assert (await stub.TextToImage(t2i_request(steps=2), timeout=10)).result.images


async def test_unary_failures_keep_their_codes_and_details(
    stub: t2i_pb2_grpc.ImageGenerationServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.TextToImage(t2i_request("fail-at-2", steps=4), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "exploded" not in (caught.value.details() or ""), "no engine internals leak"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.TextToImage(t2i_request("oom-at-2", steps=4), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Out of memory is not "queue full": no retry hint that would invite the same request back.
    assert retry_info(caught.value) is None
    assert (await stub.TextToImage(t2i_request(steps=1), timeout=10)).result.images


async def test_out_of_memory_gives_the_memory_back(tmp_path: Path) -> None:
    """The failing job's frames held 300 MiB when it ran out of memory; once it failed nothing
    may keep them alive (a retained traceback would, and on a GPU the next job would then run
    out of memory too). Measured as the server process's RSS."""
    server = await asyncio.to_thread(
        start_process,
        "tests.reliability.faults.faulty_service",
        ["--hold-mib", "300", "--step-seconds", "0.01"],
        tmp_path / "faulty.log",
    )
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
            assert (await stub.TextToImage(t2i_request(), timeout=30)).result.images
            baseline = proc_rss_mib(server.process.pid)
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.TextToImage(t2i_request("oom-holding"), timeout=30)
                assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert proc_rss_mib(server.process.pid) < baseline + 100
            stream = stub.StreamTextToImage(t2i_request("oom-holding"), timeout=30)
            await read_until(stream, "accepted")
            assert await asyncio.wait_for(stream.code(), 30) == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert proc_rss_mib(server.process.pid) < baseline + 100
            assert (await stub.TextToImage(t2i_request(), timeout=30)).result.images
    finally:
        await asyncio.to_thread(server.stop)
