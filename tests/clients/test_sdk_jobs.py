"""Job handling of the SDK against the real runtime (the sleepy test engine serving the t2i
contract): API keys, deadlines, cancellation by closing a stream, by CancelJob and by asyncio
task cancellation, queue events, and retries of RESOURCE_EXHAUSTED after RetryInfo."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from mmserve_client import (
    Accepted,
    Cancelled,
    DeadlineExceeded,
    Generation,
    JobState,
    NotFound,
    Progress,
    Queued,
    ResourceExhausted,
    RetryPolicy,
    T2IClient,
    Unauthenticated,
    aio,
)
from tests.clients.helpers import wait_for_end, wait_for_state
from tests.clients.servers import API_KEY, Served


@pytest.fixture
def sleepy(sleepy_server: Served):
    with T2IClient(sleepy_server.target, api_key=API_KEY, timeout=30) as client:
        yield client


def assert_device_free(client: T2IClient) -> None:
    started = time.monotonic()
    client.generate("quick", steps=1, timeout=10)
    assert time.monotonic() - started < 5


def test_api_key_is_sent_as_bearer(sleepy_server: Served, sleepy: T2IClient) -> None:
    with T2IClient(sleepy_server.target) as anonymous:
        with pytest.raises(Unauthenticated):
            anonymous.generate("a cat", steps=1)
        assert anonymous.health() == "serving"  # probes need no key
    with T2IClient(sleepy_server.target, api_key="wrong") as wrong:
        with pytest.raises(Unauthenticated):
            wrong.generate("a cat", steps=1)
    assert sleepy.generate("a cat", steps=1).images[0].size == (8, 8)


def test_deadline_cancels_the_server_job(sleepy: T2IClient) -> None:
    started = time.monotonic()
    seen: list[str] = []
    with pytest.raises(DeadlineExceeded) as caught:
        # on_job asks for the job id at acceptance: a call that did not ask gets it only with
        # the server's answer, which the client's own deadline may beat.
        sleepy.generate("slow", steps=400, timeout=0.5, on_job=seen.append)
    assert time.monotonic() - started < 3
    assert caught.value.job_id  # accepted before the deadline passed
    assert seen == [caught.value.job_id]
    # The contract says CANCELLED; the runtime reports FAILED with DEADLINE_EXCEEDED. Either
    # way the job has stopped on the server, which is what the client relies on.
    job = wait_for_end(sleepy, caught.value.job_id)
    assert job.state in (JobState.CANCELLED, JobState.FAILED)
    assert job.step < 400
    assert_device_free(sleepy)


def test_closing_a_stream_cancels_its_job(sleepy: T2IClient) -> None:
    stream = sleepy.stream_generate("slow", steps=400)
    assert isinstance(next(stream), Accepted)
    assert isinstance(next(stream), Progress)
    stream.close()
    wait_for_state(sleepy, stream.job_id, JobState.CANCELLED)
    assert_device_free(sleepy)


def test_breaking_out_of_a_with_block_cancels_its_job(sleepy: T2IClient) -> None:
    with sleepy.stream_generate("slow", steps=400) as stream:
        for event in stream:
            if isinstance(event, Progress) and event.step >= 2:
                break
    wait_for_state(sleepy, stream.job_id, JobState.CANCELLED)


def test_cancel_job_from_another_client_ends_the_stream(
    sleepy_server: Served, sleepy: T2IClient
) -> None:
    stream = sleepy.stream_generate("slow", steps=400)
    job_id = next(stream).job_id
    with T2IClient(sleepy_server.target, api_key=API_KEY) as other:
        assert other.cancel_job(job_id).state is JobState.CANCELLED
    with pytest.raises(Cancelled):
        for _ in stream:
            pass
    assert sleepy.get_job(job_id).state is JobState.CANCELLED


def test_unary_job_id_arrives_before_the_result(sleepy: T2IClient) -> None:
    def cancel_soon(job_id: str) -> None:
        threading.Timer(0.2, sleepy.cancel_job, args=(job_id,)).start()

    ids: list[str] = []
    with pytest.raises(Cancelled) as caught:
        sleepy.generate("slow", steps=400, on_job=lambda j: (ids.append(j), cancel_soon(j)))
    assert caught.value.job_id == ids[0]
    assert sleepy.get_job(ids[0]).state is JobState.CANCELLED


def test_a_queued_stream_reports_its_position(sleepy: T2IClient) -> None:
    first = sleepy.stream_generate("long", steps=60)  # ~3 s on the device
    assert isinstance(next(first), Accepted)
    next(first)  # running now
    with sleepy.stream_generate("next", steps=1) as second:
        accepted = next(second)
        assert isinstance(accepted, Accepted)
        assert accepted.position == 1  # first in the queue, behind the running job
        job = sleepy.get_job(accepted.job_id)
        assert job.state is JobState.QUEUED
        assert job.position == 1
        first.close()
        rest = list(second)
    assert all(isinstance(e, Queued | Progress | Generation) for e in rest)
    assert isinstance(rest[-1], Generation)


def test_unknown_job_is_not_found(sleepy: T2IClient) -> None:
    with pytest.raises(NotFound):
        sleepy.get_job("no-such-job")


async def test_cancelling_an_asyncio_task_cancels_the_job(sleepy_server: Served) -> None:
    async with aio.T2IClient(sleepy_server.target, api_key=API_KEY, timeout=30) as client:
        accepted = asyncio.Event()
        stream = client.stream_generate("slow", steps=400)

        async def read() -> None:
            async for event in stream:
                if isinstance(event, Progress):
                    accepted.set()

        task = asyncio.create_task(read())
        await asyncio.wait_for(accepted.wait(), timeout=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            job = await client.get_job(stream.job_id)
            if job.state is JobState.CANCELLED:
                break
            await asyncio.sleep(0.05)
        assert job.state is JobState.CANCELLED
        # and a cancelled unary task likewise
        ids: list[str] = []
        known = asyncio.Event()
        unary = asyncio.create_task(
            client.generate("slow", steps=400, on_job=lambda j: (ids.append(j), known.set()))
        )
        await asyncio.wait_for(known.wait(), timeout=10)
        unary.cancel()
        with pytest.raises(asyncio.CancelledError):
            await unary
        for _ in range(100):
            job = await client.get_job(ids[0])
            if job.state is JobState.CANCELLED:
                break
            await asyncio.sleep(0.05)
        assert job.state is JobState.CANCELLED


def exhaust(client: T2IClient) -> ResourceExhausted:
    """Calls until the rate limiter refuses one (at most a few calls: the burst is 1)."""
    for _ in range(4):
        try:
            client.generate("x", steps=1)
        except ResourceExhausted as error:
            return error
    raise AssertionError("the rate limit never applied")


def test_rate_limit_error_carries_retry_delay(limited_server: Served) -> None:
    with T2IClient(limited_server.target) as client:
        error = exhaust(client)
        assert 0 < error.retry_delay <= 1.0
        assert error.reason
        # a deadline shorter than the delay gives up at once instead of sleeping past it
        with T2IClient(limited_server.target, retry=5) as retrying:
            started = time.monotonic()
            with pytest.raises(ResourceExhausted):
                retrying.generate("x", steps=1, timeout=0.05)
            assert time.monotonic() - started < 0.5


def test_retry_waits_for_the_servers_delay(limited_server: Served) -> None:
    policy = RetryPolicy(max_attempts=4)
    with T2IClient(limited_server.target, retry=policy) as client:
        with T2IClient(limited_server.target) as plain:
            exhaust(plain)
        started = time.monotonic()
        assert client.generate("x", steps=1).images
        assert time.monotonic() - started >= 0.2  # it waited for a token
        with T2IClient(limited_server.target) as plain:
            exhaust(plain)
        events = list(client.stream_generate("x", steps=1))
        assert isinstance(events[-1], Generation)
