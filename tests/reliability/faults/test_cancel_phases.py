"""Client cancels, deadlines, dropped connections and CancelJob at every phase of a job (queued
behind another job, running, streaming), for unary and streaming calls, through a real server:
the call ends with the right code at once, the job ends (a queued one never starts), the queue
empties (mmserve_queue_depth) and the next job runs at once (its queue wait is ~0)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from mmserve.common.v1 import job_pb2
from mmserve.t2i.v1 import t2i_pb2_grpc
from services.runtime.server import ServiceServer
from tests.reliability.faults.support import (
    drain_stream,
    early_headers_unary,
    job_state,
    metric,
    metrics_text,
    read_until,
    t2i_request,
    wait_for,
)
from tests.support.servers import health_status

LONG = 400  # steps: 20 s at 50 ms, so a job is always still running when the fault hits
DEADLINE = 1.5  # seconds; long enough to reach the phase first
ENDED = {job_pb2.JOB_STATE_CANCELLED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_SUCCEEDED}
SERVING = 1
QUEUE_DRAIN = 2.0  # seconds for a server-side cancel to leave the queue

# What the client sees for each fault (cancel and disconnect are seen locally at once).
CLIENT_CODE = {
    "client_cancel": grpc.StatusCode.CANCELLED,
    "disconnect": grpc.StatusCode.CANCELLED,
    "cancel_job": grpc.StatusCode.CANCELLED,
    "deadline": grpc.StatusCode.DEADLINE_EXCEEDED,
}
# How the server records the job.
JOB_END = {
    "client_cancel": (job_pb2.JOB_STATE_CANCELLED, grpc.StatusCode.CANCELLED),
    "disconnect": (job_pb2.JOB_STATE_CANCELLED, grpc.StatusCode.CANCELLED),
    "cancel_job": (job_pb2.JOB_STATE_CANCELLED, grpc.StatusCode.CANCELLED),
    "deadline": (job_pb2.JOB_STATE_FAILED, grpc.StatusCode.DEADLINE_EXCEEDED),
}


async def assert_executor_free(
    server: ServiceServer, stub: t2i_pb2_grpc.ImageGenerationServiceStub
) -> None:
    """Nothing waits for the device and a new job starts at once. The client sees its own
    deadline locally; the server's copy of it can land a scheduler tick later on a busy machine,
    so the queue is given QUEUE_DRAIN seconds to empty."""

    async def queue_empty() -> bool:
        text = await asyncio.to_thread(metrics_text, server.metrics_port)
        return metric(text, "mmserve_queue_depth") == 0

    await wait_for(queue_empty, QUEUE_DRAIN, "mmserve_queue_depth == 0")
    started = time.monotonic()
    reply = await stub.TextToImage(t2i_request(steps=1), timeout=5)
    assert reply.result.usage.queue_seconds < 0.3, reply.result.usage
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("how", ["client_cancel", "deadline", "disconnect", "cancel_job"])
@pytest.mark.parametrize("phase", ["queued", "running"])
@pytest.mark.parametrize("shape", ["unary", "stream"])
async def test_fault_at_each_phase_frees_the_executor(
    faulty: ServiceServer,
    stub: t2i_pb2_grpc.ImageGenerationServiceStub,
    shape: str,
    phase: str,
    how: str,
) -> None:
    target = f"127.0.0.1:{faulty.port}"
    blocker = None
    if phase == "queued":  # a long job holds the device, so the victim waits in the queue
        blocker = stub.StreamTextToImage(t2i_request(steps=LONG), timeout=60)
        await read_until(blocker, "step")
    channel = grpc.aio.insecure_channel(target)  # the victim's own connection (disconnect)
    victim = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
    timeout = DEADLINE if how == "deadline" else 60
    try:
        if shape == "stream":
            call = victim.StreamTextToImage(t2i_request(steps=LONG), timeout=timeout)
            accepted = await read_until(call, "accepted")
            job_id = accepted.accepted.job_id
            if phase == "queued":
                assert accepted.accepted.queue.position == 1
            else:  # streaming: step events are flowing
                await read_until(call, "step")
                await read_until(call, "step")
        else:
            unary = early_headers_unary(channel)
            call = unary(t2i_request(steps=LONG), timeout=timeout)
            job_id = dict(await call.initial_metadata())["mmserve-job-id"]
            wanted = job_pb2.JOB_STATE_QUEUED if phase == "queued" else job_pb2.JOB_STATE_RUNNING

            async def in_phase() -> bool:
                return (await job_state(stub, job_id)).state == wanted

            await wait_for(in_phase, 5, f"job {job_id} {phase}")

        hit = time.monotonic()
        if how == "client_cancel":
            call.cancel()
        elif how == "disconnect":
            await channel.close()
        elif how == "cancel_job":
            await stub.CancelJob(job_pb2.CancelJobRequest(job_id=job_id), timeout=5)
        assert await asyncio.wait_for(call.code(), DEADLINE + 5) == CLIENT_CODE[how]
        # The call ends at once (a deadline when it passes), never at the job's natural end.
        assert time.monotonic() - hit < (DEADLINE + 1.5 if how == "deadline" else 1.5)

        async def ended() -> bool:
            return (await job_state(stub, job_id)).state in ENDED

        await wait_for(ended, 5, f"job {job_id} ended")
        job = await job_state(stub, job_id)
        state, code = JOB_END[how]
        assert job.state == state, job
        assert job.error_code == code.value[0], job
        if phase == "queued":
            assert not job.HasField("start_time"), "a job cancelled in the queue never starts"
            # The queue is empty while the blocker still runs: the slot is free at once.
            text = await asyncio.to_thread(metrics_text, faulty.metrics_port)
            assert metric(text, "mmserve_queue_depth") == 0
            assert blocker is not None
            blocker.cancel()
    finally:
        if blocker is not None:
            blocker.cancel()
        await channel.close()
    await assert_executor_free(faulty, stub)
    async with grpc.aio.insecure_channel(target) as probe:
        assert await health_status(probe, "mmserve.t2i.v1.ImageGenerationService") == SERVING


async def test_dropped_connection_with_many_queued_streams_empties_the_queue(
    faulty: ServiceServer, stub: t2i_pb2_grpc.ImageGenerationServiceStub
) -> None:
    blocker = stub.StreamTextToImage(t2i_request(steps=LONG), timeout=60)
    await read_until(blocker, "step")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{faulty.port}")
    victim = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
    calls = [victim.StreamTextToImage(t2i_request(steps=LONG), timeout=60) for _ in range(20)]
    job_ids = [(await read_until(call, "accepted")).job_id for call in calls]
    text = await asyncio.to_thread(metrics_text, faulty.metrics_port)
    assert metric(text, "mmserve_queue_depth") == 20
    await channel.close()  # the client vanishes with 20 jobs in the queue

    async def queue_empty() -> bool:
        page = await asyncio.to_thread(metrics_text, faulty.metrics_port)
        return metric(page, "mmserve_queue_depth") == 0

    await wait_for(queue_empty, 5, "queue emptied")
    for job_id in job_ids:
        job = await job_state(stub, job_id)
        assert job.state == job_pb2.JOB_STATE_CANCELLED
        assert not job.HasField("start_time")
    blocker.cancel()
    await assert_executor_free(faulty, stub)


async def test_job_that_ignores_cancel_holds_the_device_but_nothing_hangs(
    faulty: ServiceServer, stub: t2i_pb2_grpc.ImageGenerationServiceStub
) -> None:
    """Cancellation is cooperative: a job that never checks its token keeps the device until it
    returns (documented), but its caller is answered at once and the next job then runs."""
    call = stub.StreamTextToImage(t2i_request("ignore-cancel", steps=20), timeout=30)  # ~1 s
    await read_until(call, "step")
    follower = asyncio.ensure_future(stub.TextToImage(t2i_request(steps=1), timeout=10))
    hit = time.monotonic()
    call.cancel()
    assert await asyncio.wait_for(call.code(), 2) == grpc.StatusCode.CANCELLED
    assert time.monotonic() - hit < 0.5
    reply = await asyncio.wait_for(follower, 10)
    assert reply.result.images
    # It waited for the ignoring job to return, and no longer.
    assert 0.2 < reply.result.usage.queue_seconds < 2.0
    await assert_executor_free(faulty, stub)


async def test_deadline_covers_the_queue_wait_of_a_stream(
    faulty: ServiceServer, stub: t2i_pb2_grpc.ImageGenerationServiceStub
) -> None:
    """A stream whose deadline passes while queued ends DEADLINE_EXCEEDED after the events it
    already got (accepted, queue), not after its turn came."""
    blocker = stub.StreamTextToImage(t2i_request(steps=LONG), timeout=60)
    await read_until(blocker, "step")
    call = stub.StreamTextToImage(t2i_request(steps=1), timeout=1.0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await drain_stream(call, timeout=5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    blocker.cancel()
    await assert_executor_free(faulty, stub)
