"""Cancelling a generation (client cancel, CancelJob, deadline) stops it at the next token and
frees the single-flight executor at once."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
import pytest_asyncio

from mmserve.common.v1 import chat_pb2, job_pb2
from mmserve.vl.v1 import vl_pb2
from services.vl.capability import CAPABILITY
from tests.support.servers import running_server
from tests.vl.helpers import USER, message, request, stub, text

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Thousands of tokens: tens of seconds of work on these CPUs (the tiny model does not emit its
# end-of-turn token for this prompt), so a job that kept running would hold the device far
# longer than the bounds below.
LONG_TOKENS = 4000
FREED_WITHIN_SECONDS = 10.0


def long_answer() -> vl_pb2.ChatRequest:
    return request(message(USER, text("Tell me a very long story.")), max_new_tokens=LONG_TOKENS)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    async with running_server(CAPABILITY) as srv:
        yield srv


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vl(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield stub(channel)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def other_client(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield stub(channel)


async def wait_for_state(vl, job_id: str, state: int, timeout: float = 10.0) -> job_pb2.Job:
    deadline = time.monotonic() + timeout
    while True:
        job = (await vl.GetJob(job_pb2.GetJobRequest(job_id=job_id), timeout=5)).job
        if job.state == state or time.monotonic() > deadline:
            return job
        await asyncio.sleep(0.05)


async def assert_executor_free(vl) -> None:
    """A new job starts at once: it does not queue behind the stopped generation."""
    reply = await vl.Chat(
        request(message(USER, text("Hi")), max_new_tokens=2), timeout=FREED_WITHIN_SECONDS * 6
    )
    assert reply.usage.output_tokens >= 1
    assert reply.usage.queue_seconds < FREED_WITHIN_SECONDS


async def test_client_cancel_mid_stream_frees_the_executor(vl) -> None:
    call = vl.StreamChat(long_answer(), timeout=300)
    job_id, deltas = "", 0
    async with asyncio.timeout(120):
        async for event in call:
            if event.HasField("accepted"):
                job_id = event.accepted.job_id
            if event.HasField("delta"):
                deltas += 1
                if deltas == 3:
                    break
    call.cancel()
    job = await wait_for_state(vl, job_id, job_pb2.JOB_STATE_CANCELLED)
    assert job.state == job_pb2.JOB_STATE_CANCELLED
    assert job.error_code == grpc.StatusCode.CANCELLED.value[0]
    assert 3 <= job.progress.step < LONG_TOKENS
    await assert_executor_free(vl)


async def test_cancel_job_ends_the_stream_with_a_cancelled_finish(vl, other_client) -> None:
    events: list[vl_pb2.StreamChatResponse] = []

    async def listen() -> None:
        async for event in vl.StreamChat(long_answer(), timeout=300):
            events.append(event)
            if sum(e.HasField("delta") for e in events) == 2 and event.HasField("delta"):
                cancel = job_pb2.CancelJobRequest(job_id=events[0].accepted.job_id)
                reply = await other_client.CancelJob(cancel, timeout=10)
                assert reply.job.state == job_pb2.JOB_STATE_CANCELLED

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(listen(), timeout=120)
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    completed = events[-1].completed
    assert events[-1].HasField("completed")
    assert completed.finish_reason == chat_pb2.FINISH_REASON_CANCELLED
    assert 2 <= completed.usage.output_tokens < LONG_TOKENS
    await assert_executor_free(vl)


async def test_deadline_stops_the_generation(vl) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vl.Chat(long_answer(), timeout=1.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await assert_executor_free(vl)
