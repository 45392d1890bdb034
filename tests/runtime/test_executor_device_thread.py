"""Tests of SingleFlightExecutor.run_on_device: work outside jobs (loading, warm-up) must run on
the very thread the jobs run on, because GNU OpenMP keeps a thread team per calling thread and a
second team on the same cores slows every run.

Every wait is bounded; gates are threading.Events, so a loaded 2-core machine only makes the
tests slower, never wrong.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from services.runtime.executor import JobContext, SingleFlightExecutor

pytestmark = pytest.mark.timeout(20)

WAIT = 5.0  # upper bound for any single wait; tests normally finish far sooner


@pytest.fixture
async def executor() -> AsyncIterator[SingleFlightExecutor]:
    executor = SingleFlightExecutor()
    await executor.start()
    yield executor
    await executor.close()


async def test_runs_on_the_thread_jobs_run_on(executor: SingleFlightExecutor) -> None:
    def job_thread(ctx: JobContext) -> int:
        return threading.get_ident()

    before = await executor.run_on_device(threading.get_ident)
    from_job = await asyncio.wait_for(executor.submit("k", job_thread).result(), WAIT)
    after = await executor.run_on_device(threading.get_ident)

    assert before == from_job == after
    assert from_job != threading.get_ident()  # not the event loop thread


async def test_passes_arguments_and_returns_the_result(executor: SingleFlightExecutor) -> None:
    assert await executor.run_on_device(divmod, 17, 5) == (3, 2)


async def test_errors_propagate_unchanged(executor: SingleFlightExecutor) -> None:
    class LoadFailed(Exception):
        pass

    error = LoadFailed("weights are corrupt")

    def load() -> None:
        raise error

    with pytest.raises(LoadFailed) as raised:
        await executor.run_on_device(load)
    assert raised.value is error

    # The device thread survives the error and still runs jobs.
    done = executor.submit("k", lambda ctx: "still serving").result()
    assert await asyncio.wait_for(done, WAIT) == "still serving"


async def test_waits_for_the_running_job(executor: SingleFlightExecutor) -> None:
    started, release = threading.Event(), threading.Event()
    order: list[str] = []

    def gate(ctx: JobContext) -> None:
        started.set()
        assert release.wait(WAIT), "gate was never released"
        order.append("job")

    try:
        job = executor.submit("k", gate)
        assert await asyncio.to_thread(started.wait, WAIT), "gate job never started"
        outside = asyncio.ensure_future(executor.run_on_device(order.append, "outside"))
        await asyncio.sleep(0.1)
        assert not outside.done()
        assert order == []
    finally:
        release.set()
    await asyncio.wait_for(job.result(), WAIT)
    await asyncio.wait_for(outside, WAIT)
    assert order == ["job", "outside"]


async def test_raises_before_start() -> None:
    executor = SingleFlightExecutor()
    called: list[bool] = []
    with pytest.raises(RuntimeError, match="not started"):
        await executor.run_on_device(called.append, True)
    assert called == []


async def test_raises_after_close() -> None:
    executor = SingleFlightExecutor()
    await executor.start()
    await executor.close()
    with pytest.raises(RuntimeError, match="closed"):
        await executor.run_on_device(threading.get_ident)
