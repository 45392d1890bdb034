"""The executor's joinable kinds (iteration-level batching): jobs join a running device run
between its steps, end one by one, cancel alone, and keep FIFO order with other kinds.

The run here is a toy step loop (each job counts down its steps), so the scheduling is tested
on its own; the chat decode loop on real models is tested in tests/vl and tests/omni.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.runtime.batching import JoinSession
from services.runtime.errors import JobCancelled
from services.runtime.executor import ExecutorConfig, JobState, JoinSpec, SingleFlightExecutor

pytestmark = pytest.mark.timeout(30)

WAIT = 10.0
STEP_SECONDS = 0.02


class StepLoop:
    """A joined run: every job's input is its number of steps; one step advances them all.
    Records what ran together, and can be held before its next step."""

    def __init__(self) -> None:
        self.steps: list[list[str]] = []  # the job ids of each step
        self.runs = 0
        self.hold = threading.Event()
        self.hold.set()
        self.fail_at_step: int | None = None

    def __call__(self, session: JoinSession) -> None:
        self.runs += 1
        rows: list[list[Any]] = []  # [job, steps left]
        while True:
            taken = session.take()
            if taken is None:
                return
            rows += [[job, job.batch_input] for job in taken]
            assert self.hold.wait(WAIT)
            if self.fail_at_step is not None and len(self.steps) == self.fail_at_step:
                raise RuntimeError("the model broke")
            time.sleep(STEP_SECONDS)
            self.steps.append([row[0].job_id for row in rows])
            for row in rows:
                row[1] -= 1
            for row in [row for row in rows if row[0].ctx.cancelled or row[1] <= 0]:
                rows.remove(row)
                job = row[0]
                value = job.ctx.cancel.error if job.ctx.cancelled else f"done {job.batch_input}"
                session.done(job, value, len(rows) + 1)


@pytest.fixture
async def executor() -> AsyncIterator[SingleFlightExecutor]:
    executor = SingleFlightExecutor(ExecutorConfig())
    await executor.start()
    yield executor
    await executor.close()


async def until(predicate: Any, timeout: float = WAIT) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_a_job_joins_the_running_run_and_ends_on_its_own(
    executor: SingleFlightExecutor,
) -> None:
    loop = StepLoop()
    executor.register_joinable("chat", loop, JoinSpec(max_rows=4))
    assert executor.is_batched("chat")
    long = executor.submit("chat", batch_input=40)
    await until(lambda: len(loop.steps) >= 3)
    short = executor.submit("chat", batch_input=3)
    assert await asyncio.wait_for(short.result(), WAIT) == "done 3"
    assert long.state is JobState.RUNNING  # the newcomer left first
    assert await asyncio.wait_for(long.result(), WAIT) == "done 40"
    assert loop.runs == 1  # one device run served both
    shared = [step for step in loop.steps if len(step) == 2]
    assert len(shared) == 3
    assert executor.get(short.job_id).batch_size == 2


async def test_cancelling_one_job_leaves_the_others_running(
    executor: SingleFlightExecutor,
) -> None:
    loop = StepLoop()
    executor.register_joinable("chat", loop, JoinSpec(max_rows=4))
    first = executor.submit("chat", batch_input=30)
    second = executor.submit("chat", batch_input=30)
    await until(lambda: any(len(step) == 2 for step in loop.steps))
    first.cancel()
    with pytest.raises(JobCancelled):
        await asyncio.wait_for(first.result(), WAIT)
    assert await asyncio.wait_for(second.result(), WAIT) == "done 30"
    assert loop.steps[-1] == [second.job_id]


async def test_max_rows_bounds_the_run_and_the_rest_join_as_rows_leave(
    executor: SingleFlightExecutor,
) -> None:
    loop = StepLoop()
    executor.register_joinable("chat", loop, JoinSpec(max_rows=2))
    loop.hold.clear()
    handles = [executor.submit("chat", batch_input=steps) for steps in (2, 6, 3)]
    await until(lambda: executor.queue_depth == 1)
    loop.hold.set()
    results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), WAIT)
    assert results == ["done 2", "done 6", "done 3"]
    assert max(len(step) for step in loop.steps) == 2
    assert loop.runs == 1  # the third joined when the first left


async def test_a_job_of_another_kind_queued_first_stops_admission(
    executor: SingleFlightExecutor,
) -> None:
    loop = StepLoop()
    executor.register_joinable("chat", loop, JoinSpec(max_rows=8))
    order: list[str] = []
    running = executor.submit("chat", batch_input=10)
    await until(lambda: len(loop.steps) >= 1)
    other = executor.submit("speech", lambda ctx: order.append("speech") or "spoken")
    later = executor.submit("chat", batch_input=1)
    assert await asyncio.wait_for(running.result(), WAIT) == "done 10"
    assert await asyncio.wait_for(other.result(), WAIT) == "spoken"
    assert await asyncio.wait_for(later.result(), WAIT) == "done 1"
    assert loop.runs == 2  # the later chat waited for the other kind, then ran anew
    assert all(later.job_id not in step for step in loop.steps[:10])


async def test_a_failing_run_fails_its_jobs_and_the_next_run_starts_clean(
    executor: SingleFlightExecutor,
) -> None:
    loop = StepLoop()
    executor.register_joinable("chat", loop, JoinSpec(max_rows=4))
    loop.fail_at_step = 2
    handles = [executor.submit("chat", batch_input=10) for _ in range(2)]
    for handle in handles:
        with pytest.raises(RuntimeError, match="the model broke"):
            await asyncio.wait_for(handle.result(), WAIT)
    loop.fail_at_step = None
    again = executor.submit("chat", batch_input=2)
    assert await asyncio.wait_for(again.result(), WAIT) == "done 2"


async def test_drain_waits_for_joined_jobs(executor: SingleFlightExecutor) -> None:
    loop = StepLoop()
    executor.register_joinable("chat", loop, JoinSpec(max_rows=4))
    handles = [executor.submit("chat", batch_input=5) for _ in range(3)]
    assert await executor.drain(WAIT)
    assert [await h.result() for h in handles] == ["done 5"] * 3
