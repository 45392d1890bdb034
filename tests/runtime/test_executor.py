"""Tests of the single-flight executor: ordering, queue bounds, ETAs, cancellation, deadlines,
the job registry, micro-batching, OOM halving, drain, heartbeats and observer hooks.

Timing-sensitive behaviour is checked with threading.Event gates and order/state assertions;
time bounds are generous so a loaded 2-core machine does not make them flaky. Every wait is
bounded.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from services.runtime.errors import (
    DeadlineExceeded,
    JobCancelled,
    NotFound,
    OutOfMemory,
    QueueFull,
    Unavailable,
)
from services.runtime.executor import (
    BatchSpec,
    CancelToken,
    ExecutorConfig,
    JobContext,
    JobEvent,
    JobFailed,
    JobFinished,
    JobHeartbeat,
    JobOutput,
    JobProgress,
    JobQueued,
    JobStarted,
    JobState,
    RunTimeEstimator,
    SingleFlightExecutor,
)

pytestmark = pytest.mark.timeout(20)

WAIT = 5.0  # upper bound for any single wait; tests normally finish far sooner

_GATES: list[Gate] = []


class Gate:
    """A work function that holds the device until the test releases it."""

    def __init__(self, result: Any = "gate") -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.result = result
        _GATES.append(self)

    def __call__(self, ctx: JobContext) -> Any:
        self.started.set()
        if not self.release.wait(WAIT):
            raise TimeoutError("gate was never released")
        return self.result

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.wait, WAIT), "gate job never started"


class RecordingObserver:
    def __init__(self) -> None:
        self.depths: list[int] = []
        self.started: list[tuple[str, float]] = []
        self.finished: list[tuple[str, JobState, float]] = []
        self.batches: list[tuple[str, int]] = []
        self.halved: list[tuple[str, int]] = []

    def queue_depth(self, depth: int) -> None:
        self.depths.append(depth)

    def job_started(self, kind: str, queue_seconds: float) -> None:
        self.started.append((kind, queue_seconds))

    def job_finished(self, kind: str, state: JobState, run_seconds: float) -> None:
        self.finished.append((kind, state, run_seconds))

    def batch_run(self, kind: str, size: int) -> None:
        self.batches.append((kind, size))

    def oom_halved(self, kind: str, new_max_batch: int) -> None:
        self.halved.append((kind, new_max_batch))


class BrokenObserver(RecordingObserver):
    def queue_depth(self, depth: int) -> None:
        raise RuntimeError("metrics are broken")

    def job_finished(self, kind: str, state: JobState, run_seconds: float) -> None:
        raise RuntimeError("metrics are broken")


Factory = Callable[..., Awaitable[SingleFlightExecutor]]


@pytest.fixture(autouse=True)
def _release_gates() -> Any:
    yield
    for gate in _GATES:
        gate.release.set()
    _GATES.clear()


@pytest.fixture
async def make() -> AsyncIterator[Factory]:
    created: list[SingleFlightExecutor] = []

    async def factory(observer: Any = None, **config: Any) -> SingleFlightExecutor:
        executor = SingleFlightExecutor(ExecutorConfig(**config), observer)
        await executor.start()
        created.append(executor)
        return executor

    yield factory
    for gate in _GATES:
        gate.release.set()
    for executor in created:
        await executor.close()


async def until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Test-side wait for a condition (the executor itself never polls)."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.005)


async def next_event(events: AsyncIterator[JobEvent], timeout: float = WAIT) -> JobEvent:
    return await asyncio.wait_for(anext(events), timeout)


async def collect(events: AsyncIterator[JobEvent], timeout: float = WAIT) -> list[JobEvent]:
    async def run() -> list[JobEvent]:
        return [event async for event in events]

    return await asyncio.wait_for(run(), timeout)


def returns(value: Any) -> Callable[[JobContext], Any]:
    return lambda ctx: value


# ---------------------------------------------------------------------------------------------
# 1. FIFO, single flight, events
# ---------------------------------------------------------------------------------------------


async def test_fifo_order_and_one_job_at_a_time_on_the_device_thread(make: Factory) -> None:
    executor = await make()
    lock = threading.Lock()
    active = 0
    max_active = 0
    order: list[int] = []
    threads: set[str] = set()

    def work(i: int) -> Callable[[JobContext], int]:
        def fn(ctx: JobContext) -> int:
            nonlocal active, max_active
            with lock:
                active += 1
                max_active = max(max_active, active)
            threads.add(threading.current_thread().name)
            time.sleep(0.01)
            order.append(i)
            with lock:
                active -= 1
            return i * i

        return fn

    handles = [executor.submit("k", work(i)) for i in range(8)]
    results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), WAIT)

    assert results == [i * i for i in range(8)]
    assert order == list(range(8))
    assert max_active == 1
    assert len(threads) == 1
    assert next(iter(threads)).startswith("device")
    assert all(h.snapshot().state is JobState.SUCCEEDED for h in handles)


async def test_events_arrive_in_order_with_progress_output_and_usage(make: Factory) -> None:
    executor = await make()

    def fn(ctx: JobContext) -> str:
        ctx.progress(1, 2, note="half")
        ctx.emit("hello ")
        ctx.progress(2, 2)
        ctx.emit("world")
        return "done"

    handle = executor.submit("k", fn)
    events = await collect(handle.events())

    assert [type(e) for e in events] == [
        JobQueued,
        JobStarted,
        JobProgress,
        JobOutput,
        JobProgress,
        JobOutput,
        JobFinished,
    ]
    queued, _, first_progress, out1, last_progress, out2, finished = events
    assert isinstance(queued, JobQueued)
    assert queued.position == 1
    assert isinstance(first_progress, JobProgress)
    assert (first_progress.step, first_progress.total) == (1, 2)
    assert first_progress.extra == {"note": "half"}
    assert first_progress.eta_seconds >= 0
    assert isinstance(last_progress, JobProgress)
    assert last_progress.step == 2
    assert isinstance(out1, JobOutput)
    assert isinstance(out2, JobOutput)
    assert out1.payload + out2.payload == "hello world"
    assert isinstance(finished, JobFinished)
    assert finished.result == "done"
    assert finished.usage.batch_size == 1
    assert finished.usage.run_seconds >= 0
    assert finished.usage.queue_seconds >= 0
    assert await handle.result() == "done"
    with pytest.raises(RuntimeError):
        handle.events()
    snapshot = handle.snapshot()
    assert (snapshot.step, snapshot.total_steps) == (2, 2)
    assert snapshot.start_time is not None
    assert snapshot.end_time is not None
    assert snapshot.end_time >= snapshot.start_time >= snapshot.create_time


async def test_running_snapshot_reports_progress(make: Factory) -> None:
    executor = await make()
    reported = threading.Event()
    release = threading.Event()

    def fn(ctx: JobContext) -> str:
        ctx.progress(1, 4)
        reported.set()
        release.wait(WAIT)
        return "ok"

    handle = executor.submit("k", fn)
    assert await asyncio.to_thread(reported.wait, WAIT)
    await until(lambda: handle.snapshot().step == 1)
    snapshot = executor.get(handle.job_id)
    assert snapshot.state is JobState.RUNNING
    assert (snapshot.position, snapshot.step, snapshot.total_steps) == (0, 1, 4)
    assert snapshot.eta_seconds >= 0
    assert snapshot.elapsed_seconds >= 0
    release.set()
    assert await asyncio.wait_for(handle.result(), WAIT) == "ok"


# ---------------------------------------------------------------------------------------------
# 2. Bounded queue
# ---------------------------------------------------------------------------------------------


async def test_full_queue_raises_queue_full_at_once(make: Factory) -> None:
    executor = await make(max_queue_size=3)
    gate = Gate()
    running = executor.submit("slow", gate)
    await gate.wait_started()
    assert executor.queue_depth == 0

    queued = [executor.submit("k", returns(i)) for i in range(3)]
    assert executor.queue_depth == 3
    with pytest.raises(QueueFull) as info:
        executor.submit("k", returns("rejected"))
    assert info.value.retry_after_seconds > 0
    assert info.value.code_name == "RESOURCE_EXHAUSTED"

    gate.release.set()
    assert await asyncio.wait_for(running.result(), WAIT) == "gate"
    results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in queued)), WAIT)
    assert results == [0, 1, 2]
    # Room again once the queue drained.
    assert await asyncio.wait_for(executor.submit("k", returns("again")).result(), WAIT) == "again"


# ---------------------------------------------------------------------------------------------
# 3. ETA
# ---------------------------------------------------------------------------------------------


def test_run_time_estimator_uses_base_until_min_samples_then_ema() -> None:
    estimator = RunTimeEstimator(alpha=0.5, min_samples=2, base_seconds=5.0)
    assert estimator.estimate("a") == 5.0
    estimator.observe("a", 1.0)
    assert estimator.estimate("a") == 5.0  # one sample is not enough
    estimator.observe("a", 3.0)
    assert estimator.estimate("a") == pytest.approx(2.0)  # 0.5 * 3 + 0.5 * 1
    estimator.observe("a", 4.0)
    assert estimator.estimate("a") == pytest.approx(3.0)
    assert estimator.estimate("b") == 5.0
    assert estimator.samples("a") == 3


async def test_eta_for_kind_learns_from_runs(make: Factory) -> None:
    executor = await make(eta_base_seconds=5.0, eta_min_samples=2)
    assert executor.eta_for_kind("fast") == 5.0
    await asyncio.wait_for(executor.submit("fast", returns(1)).result(), WAIT)
    assert executor.eta_for_kind("fast") == 5.0
    await asyncio.wait_for(executor.submit("fast", returns(2)).result(), WAIT)
    assert executor.eta_for_kind("fast") < 1.0
    assert executor.eta_for_kind("other") == 5.0


async def test_queue_positions_and_etas_are_pushed_when_jobs_ahead_leave(make: Factory) -> None:
    executor = await make(eta_base_seconds=5.0)
    gate = Gate()
    executor.submit("slow", gate)
    await gate.wait_started()

    a = executor.submit("k", returns("a"))
    b = executor.submit("k", returns("b"))
    c = executor.submit("k", returns("c"))
    snaps = [h.snapshot() for h in (a, b, c)]
    assert [s.position for s in snaps] == [1, 2, 3]
    assert all(s.queue_length == 3 for s in snaps)
    # Remaining estimate of the running job (5 s minus its elapsed time) plus 5 s per job ahead.
    assert 0 < snaps[0].eta_seconds <= 5.0
    assert 5.0 < snaps[1].eta_seconds <= 10.0
    assert 10.0 < snaps[2].eta_seconds <= 15.0

    b_events = b.events()
    c_events = c.events()
    first_b = await next_event(b_events)
    first_c = await next_event(c_events)
    assert isinstance(first_b, JobQueued)
    assert (first_b.position, first_b.queue_length) == (2, 2)
    assert isinstance(first_c, JobQueued)
    assert (first_c.position, first_c.queue_length) == (3, 3)
    assert 5.0 < first_b.eta_seconds <= 10.0

    a.cancel()
    moved_b = await next_event(b_events)
    moved_c = await next_event(c_events)
    assert isinstance(moved_b, JobQueued)
    assert (moved_b.position, moved_b.queue_length) == (1, 2)
    assert isinstance(moved_c, JobQueued)
    assert (moved_c.position, moved_c.queue_length) == (2, 2)
    assert 0 < moved_b.eta_seconds <= 5.0
    assert 5.0 < moved_c.eta_seconds <= 10.0

    gate.release.set()
    rest_b = await collect(b_events)
    rest_c = await collect(c_events)
    assert isinstance(rest_b[0], JobStarted)
    assert isinstance(rest_b[-1], JobFinished)
    # c moves to the head when b starts, then starts itself.
    queued_c = [e for e in rest_c if isinstance(e, JobQueued)]
    assert queued_c
    assert queued_c[-1].position == 1
    assert isinstance(rest_c[-1], JobFinished)
    assert rest_c[-1].result == "c"


# ---------------------------------------------------------------------------------------------
# 4. Cancellation
# ---------------------------------------------------------------------------------------------


async def test_cancel_queued_job_by_handle_and_by_id_removes_it_at_once(make: Factory) -> None:
    executor = await make()
    gate = Gate()
    executor.submit("slow", gate)
    await gate.wait_started()
    calls: list[str] = []

    def work(name: str) -> Callable[[JobContext], str]:
        return lambda ctx: calls.append(name) or name

    a = executor.submit("k", work("a"))
    b = executor.submit("k", work("b"))
    c = executor.submit("k", work("c"))
    a_events = a.events()

    a.cancel()
    assert a.snapshot().state is JobState.CANCELLED
    assert executor.queue_depth == 2
    assert b.snapshot().position == 1

    snapshot = executor.cancel(c.job_id)
    assert snapshot.state is JobState.CANCELLED
    assert isinstance(snapshot.error, JobCancelled)
    assert executor.queue_depth == 1

    with pytest.raises(JobCancelled, match="cancelled by client"):
        await asyncio.wait_for(a.result(), WAIT)
    with pytest.raises(JobCancelled, match="cancelled by CancelJob"):
        await asyncio.wait_for(c.result(), WAIT)
    events = await collect(a_events)
    assert [type(e) for e in events] == [JobQueued, JobFailed]

    gate.release.set()
    assert await asyncio.wait_for(b.result(), WAIT) == "b"
    assert calls == ["b"]


async def test_cancel_running_job_fails_at_once_but_device_waits_for_fn(make: Factory) -> None:
    executor = await make()
    saw_cancel = threading.Event()
    wind_down = threading.Event()
    next_started = threading.Event()

    def fn(ctx: JobContext) -> str:
        for _ in range(2000):
            if ctx.cancelled:
                break
            time.sleep(0.005)
        saw_cancel.set()
        wind_down.wait(WAIT)  # a slow clean-up after the cancel was seen
        ctx.check()
        return "not reached"

    def next_fn(ctx: JobContext) -> str:
        next_started.set()
        return "next"

    running = executor.submit("k", fn)
    following = executor.submit("k", next_fn)
    await until(lambda: running.state is JobState.RUNNING)
    running_events = running.events()

    running.cancel("stop now")
    # Resolved at once, while the work function is still winding down.
    with pytest.raises(JobCancelled, match="stop now"):
        await asyncio.wait_for(running.result(), WAIT)
    assert not wind_down.is_set()
    events = await collect(running_events)
    assert isinstance(events[-1], JobFailed)
    assert isinstance(events[-1].error, JobCancelled)

    assert await asyncio.to_thread(saw_cancel.wait, WAIT)
    await asyncio.sleep(0.1)
    # Single flight: the next job waits until the cancelled function returned.
    assert not next_started.is_set()
    assert following.state is JobState.QUEUED
    wind_down.set()
    assert await asyncio.wait_for(following.result(), WAIT) == "next"
    assert running.snapshot().state is JobState.CANCELLED


async def test_deadline_passing_while_queued_removes_job_without_reaching_head(
    make: Factory,
) -> None:
    executor = await make()
    gate = Gate()
    executor.submit("slow", gate)
    await gate.wait_started()
    called = threading.Event()

    started = time.monotonic()
    doomed = executor.submit("k", lambda ctx: called.set(), deadline=started + 0.1)
    behind = executor.submit("k", returns("behind"))
    with pytest.raises(DeadlineExceeded):
        await asyncio.wait_for(doomed.result(), WAIT)
    assert time.monotonic() - started < 3.0
    assert not gate.release.is_set()  # the running job never finished: a timer expired it
    assert doomed.snapshot().state is JobState.FAILED
    assert executor.queue_depth == 1
    assert behind.snapshot().position == 1

    gate.release.set()
    assert await asyncio.wait_for(behind.result(), WAIT) == "behind"
    assert not called.is_set()


# ---------------------------------------------------------------------------------------------
# 5. Deadline covers queue and run
# ---------------------------------------------------------------------------------------------


async def test_deadline_covers_queue_and_run(make: Factory) -> None:
    executor = await make()
    checks = 0

    def slow(ctx: JobContext) -> str:
        time.sleep(0.15)
        return "slow"

    def loop_with_checks(ctx: JobContext) -> str:
        nonlocal checks
        for _ in range(2000):
            ctx.check()
            checks += 1
            time.sleep(0.005)
        return "never"

    started = time.monotonic()
    executor.submit("slow", slow)
    handle = executor.submit("k", loop_with_checks, deadline=started + 0.3)
    with pytest.raises(DeadlineExceeded):
        await asyncio.wait_for(handle.result(), WAIT)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 2.0
    snapshot = handle.snapshot()
    assert snapshot.state is JobState.FAILED
    assert snapshot.start_time is not None  # it waited in the queue, then ran
    assert snapshot.queue_seconds >= 0.1
    assert checks > 0


# ---------------------------------------------------------------------------------------------
# 6. Registry
# ---------------------------------------------------------------------------------------------


async def test_registry_keeps_jobs_for_retention_then_forgets_them(make: Factory) -> None:
    executor = await make(job_retention_seconds=0.2)
    handle = executor.submit("k", returns(1))
    assert uuid.UUID(handle.job_id).version == 4
    assert executor.get(handle.job_id).state in (JobState.QUEUED, JobState.RUNNING)
    await asyncio.wait_for(handle.result(), WAIT)
    assert executor.get(handle.job_id).state is JobState.SUCCEEDED

    await asyncio.sleep(0.3)
    with pytest.raises(NotFound):
        executor.get(handle.job_id)
    with pytest.raises(NotFound):
        executor.cancel(handle.job_id)
    with pytest.raises(NotFound):
        executor.get("no-such-job")


async def test_registry_caps_retained_jobs_but_keeps_active_ones(make: Factory) -> None:
    executor = await make(max_retained_jobs=2)
    handles = []
    for i in range(3):
        handle = executor.submit("k", returns(i))
        await asyncio.wait_for(handle.result(), WAIT)
        handles.append(handle)
    with pytest.raises(NotFound):
        executor.get(handles[0].job_id)
    assert executor.get(handles[1].job_id).state is JobState.SUCCEEDED
    assert executor.get(handles[2].job_id).state is JobState.SUCCEEDED

    # The cap counts ended jobs only: with a cap of 0, active jobs stay visible until they end.
    strict = await make(max_retained_jobs=0)
    gate = Gate()
    running = strict.submit("slow", gate)
    queued = strict.submit("k", returns("q"))
    await gate.wait_started()
    assert strict.get(running.job_id).state is JobState.RUNNING
    assert strict.get(queued.job_id).state is JobState.QUEUED
    gate.release.set()
    assert await asyncio.wait_for(queued.result(), WAIT) == "q"
    with pytest.raises(NotFound):
        strict.get(running.job_id)
    assert running.snapshot().state is JobState.SUCCEEDED  # the handle still knows


async def test_cancel_of_finished_job_returns_final_snapshot_unchanged(make: Factory) -> None:
    executor = await make()
    handle = executor.submit("k", returns("value"))
    assert await asyncio.wait_for(handle.result(), WAIT) == "value"
    before = executor.get(handle.job_id)
    after = executor.cancel(handle.job_id)
    assert after.state is JobState.SUCCEEDED
    assert after.error is None
    assert after.end_time == before.end_time
    handle.cancel()  # also a no-op
    assert await handle.result() == "value"


# ---------------------------------------------------------------------------------------------
# 7. Micro-batching
# ---------------------------------------------------------------------------------------------


async def test_batches_group_same_key_fifo_up_to_max_batch(make: Factory) -> None:
    executor = await make()
    calls: list[list[str]] = []

    def batch_fn(inputs: list[Any], contexts: list[JobContext]) -> list[Any]:
        assert len(inputs) == len(contexts)
        calls.append(list(inputs))
        return [x.upper() for x in inputs]

    executor.register_batch("embed", batch_fn, BatchSpec(max_batch_size=4, max_wait_ms=50))
    gate = Gate()
    executor.submit("slow", gate)
    await gate.wait_started()
    a = [executor.submit("embed", batch_input=f"a{i}", batch_key="a") for i in range(6)]
    b = executor.submit("embed", batch_input="b0", batch_key="b")
    gate.release.set()

    results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in [*a, b])), WAIT)
    assert results == ["A0", "A1", "A2", "A3", "A4", "A5", "B0"]
    assert calls == [["a0", "a1", "a2", "a3"], ["a4", "a5"], ["b0"]]
    assert [h.snapshot().batch_size for h in [*a, b]] == [4, 4, 4, 4, 2, 2, 1]


async def test_batch_head_waits_for_companions_up_to_max_wait(make: Factory) -> None:
    executor = await make()
    calls: list[list[str]] = []

    def batch_fn(inputs: list[Any], contexts: list[JobContext]) -> list[Any]:
        calls.append(list(inputs))
        return list(inputs)

    executor.register_batch("embed", batch_fn, BatchSpec(max_batch_size=8, max_wait_ms=400))
    first = executor.submit("embed", batch_input="x1")
    await asyncio.sleep(0.05)
    second = executor.submit("embed", batch_input="x2")
    results = await asyncio.wait_for(asyncio.gather(first.result(), second.result()), WAIT)
    assert results == ["x1", "x2"]
    assert calls == [["x1", "x2"]]

    # A lone job runs once its wait is over.
    lone = executor.submit("embed", batch_input="solo")
    assert await asyncio.wait_for(lone.result(), WAIT) == "solo"


async def test_batch_waits_for_announced_jobs_but_not_longer(make: Factory) -> None:
    executor = await make()
    calls: list[list[str]] = []

    def batch_fn(inputs: list[Any], contexts: list[JobContext]) -> list[Any]:
        calls.append(list(inputs))
        return list(inputs)

    spec = BatchSpec(max_batch_size=8, max_wait_ms=0, max_arrival_wait_ms=2_000)
    executor.register_batch("embed", batch_fn, spec)
    # Nothing announced: a lone job runs at once (max_wait_ms is 0).
    assert await asyncio.wait_for(executor.submit("embed", batch_input="solo").result(), 1.0)
    # Announced while the first is queued: the batch waits for them and takes all three.
    announced = [executor.expect("embed") for _ in range(2)]
    first = executor.submit("embed", batch_input="x1")
    await asyncio.sleep(0.1)
    assert not first.done()
    later = []
    for name, announcement in zip(("x2", "x3"), announced, strict=True):
        later.append(executor.submit("embed", batch_input=name))
        announcement.close()
    assert await asyncio.wait_for(
        asyncio.gather(first.result(), *(h.result() for h in later)), WAIT
    )
    assert calls == [["solo"], ["x1", "x2", "x3"]]
    # Announcements withdrawn without a job (their decode failed) release the wait at once.
    gone = [executor.expect("embed") for _ in range(2)]
    fifth = executor.submit("embed", batch_input="x5")
    await asyncio.sleep(0.05)
    assert not fifth.done()
    started = time.monotonic()
    for announcement in gone:
        announcement.close()
        announcement.close()  # idempotent
    assert await asyncio.wait_for(fifth.result(), 1.0) == "x5"
    assert time.monotonic() - started < 1.0


async def test_arrival_wait_is_bounded(make: Factory) -> None:
    executor = await make()
    spec = BatchSpec(max_batch_size=8, max_wait_ms=0, max_arrival_wait_ms=1000)
    executor.register_batch("embed", lambda inputs, contexts: list(inputs), spec)
    never = [executor.expect("embed") for _ in range(2)]
    started = time.monotonic()
    assert await asyncio.wait_for(executor.submit("embed", batch_input=1).result(), WAIT) == 1
    assert 0.95 < time.monotonic() - started < WAIT
    for announcement in never:
        announcement.close()
    # Kinds without an arrival wait ignore announcements.
    executor.register_batch("plain", lambda inputs, contexts: list(inputs), BatchSpec(8, 0))
    executor.expect("plain")
    executor.expect("plain")
    started = time.monotonic()
    assert await asyncio.wait_for(executor.submit("plain", batch_input=2).result(), WAIT) == 2
    assert time.monotonic() - started < 0.5


async def _closed_loop_batches(make: Factory, callers: int, return_wait_ms: float) -> list[int]:
    """`callers` callers that each send again 2 ms after their answer, 6 rounds each: the
    sizes of the batches the device ran (a batch takes 200 ms, so a return wait may be 20 ms)."""
    executor = await make()
    sizes: list[int] = []

    def batch_fn(inputs: list[Any], contexts: list[JobContext]) -> list[Any]:
        sizes.append(len(inputs))
        time.sleep(0.2)
        return list(inputs)

    spec = BatchSpec(max_batch_size=8, max_wait_ms=0, max_return_wait_ms=return_wait_ms)
    executor.register_batch("embed", batch_fn, spec)

    async def caller(number: int) -> None:
        await asyncio.sleep(0.03 * number)  # they start apart, so the first batch is small
        for _ in range(6):
            await asyncio.wait_for(executor.submit("embed", batch_input=number).result(), WAIT)
            await asyncio.sleep(0.002)

    await asyncio.gather(*(caller(n) for n in range(callers)))
    return sizes


async def test_return_wait_lets_looping_callers_share_a_batch(make: Factory) -> None:
    # Without it, 4 looping callers never run as one batch of 4 after the first.
    assert 4 not in (await _closed_loop_batches(make, 4, 0))[1:]
    # With it, they settle into batches of 4 once the first batches have gathered them (the
    # callers that started first also end first). The 2 s asked for is cut to 10% of a batch.
    sizes = await _closed_loop_batches(make, 4, 2_000)
    assert sizes.count(4) >= 4, sizes
    assert sum(sizes) == 24


async def test_return_wait_never_delays_a_lone_caller(make: Factory) -> None:
    executor = await make()
    executor.register_batch(
        "embed", lambda inputs, contexts: list(inputs), BatchSpec(8, 0, max_return_wait_ms=2_000)
    )
    for number in range(5):
        started = time.monotonic()
        done = await asyncio.wait_for(executor.submit("embed", batch_input=number).result(), WAIT)
        assert done == number
        assert time.monotonic() - started < 1.0  # the 2 s wait is never taken
    with pytest.raises(ValueError, match="max_return_wait_ms"):
        BatchSpec(8, 0, max_return_wait_ms=-1)


async def test_full_batch_does_not_wait(make: Factory) -> None:
    executor = await make()
    executor.register_batch(
        "embed",
        lambda inputs, contexts: list(inputs),
        BatchSpec(max_batch_size=2, max_wait_ms=60_000),
    )
    started = time.monotonic()
    handles = [executor.submit("embed", batch_input=i) for i in range(2)]
    assert await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), WAIT) == [0, 1]
    assert time.monotonic() - started < WAIT


async def test_batch_element_exception_fails_only_that_job(make: Factory) -> None:
    executor = await make()

    def batch_fn(inputs: list[Any], contexts: list[JobContext]) -> list[Any]:
        return [ValueError(f"bad {x}") if x == "bad" else x for x in inputs]

    executor.register_batch("embed", batch_fn, BatchSpec(max_batch_size=4, max_wait_ms=200))
    good = executor.submit("embed", batch_input="good")
    bad = executor.submit("embed", batch_input="bad")
    assert await asyncio.wait_for(good.result(), WAIT) == "good"
    with pytest.raises(ValueError, match="bad bad"):
        await asyncio.wait_for(bad.result(), WAIT)
    assert good.snapshot().batch_size == bad.snapshot().batch_size == 2
    assert bad.snapshot().state is JobState.FAILED


async def test_cancelled_jobs_are_left_out_of_batches(make: Factory) -> None:
    executor = await make()
    calls: list[list[str]] = []

    def batch_fn(inputs: list[Any], contexts: list[JobContext]) -> list[Any]:
        calls.append(list(inputs))
        return list(inputs)

    executor.register_batch("embed", batch_fn, BatchSpec(max_batch_size=8, max_wait_ms=20))
    gate = Gate()
    executor.submit("slow", gate)
    await gate.wait_started()
    e1, e2, e3 = (executor.submit("embed", batch_input=f"e{i}") for i in (1, 2, 3))
    e2.cancel()
    gate.release.set()
    assert await asyncio.wait_for(asyncio.gather(e1.result(), e3.result()), WAIT) == ["e1", "e3"]
    assert calls == [["e1", "e3"]]
    assert e1.snapshot().batch_size == 2


# ---------------------------------------------------------------------------------------------
# 8. Out of memory
# ---------------------------------------------------------------------------------------------


async def test_batch_oom_halves_recursively_and_lowers_max_batch(make: Factory) -> None:
    observer = RecordingObserver()
    executor = await make(observer=observer)
    calls: list[int] = []

    def batch_fn(inputs: list[Any], contexts: list[JobContext]) -> list[Any]:
        calls.append(len(inputs))
        if len(inputs) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [x * 10 for x in inputs]

    executor.register_batch("embed", batch_fn, BatchSpec(max_batch_size=8, max_wait_ms=20))
    gate = Gate()
    executor.submit("slow", gate)
    await gate.wait_started()
    handles = [executor.submit("embed", batch_input=i) for i in range(8)]
    gate.release.set()

    results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), WAIT)
    assert results == [i * 10 for i in range(8)]
    assert calls == [8, 4, 2, 2, 4, 2, 2]
    assert [h.snapshot().batch_size for h in handles] == [2] * 8
    assert executor.effective_max_batch("embed") == 2
    assert observer.halved == [("embed", 4), ("embed", 2)]

    # Later batches respect the lowered limit.
    calls.clear()
    gate = Gate()
    executor.submit("slow", gate)
    await gate.wait_started()
    more = [executor.submit("embed", batch_input=i) for i in range(4)]
    gate.release.set()
    await asyncio.wait_for(asyncio.gather(*(h.result() for h in more)), WAIT)
    assert calls == [2, 2]


async def test_single_item_oom_fails_only_that_job(make: Factory) -> None:
    executor = await make()

    def batch_fn(inputs: list[Any], contexts: list[JobContext]) -> list[Any]:
        if "big" in inputs:
            raise MemoryError("too big")
        return list(inputs)

    executor.register_batch("embed", batch_fn, BatchSpec(max_batch_size=2, max_wait_ms=200))
    small = executor.submit("embed", batch_input="small")
    big = executor.submit("embed", batch_input="big")
    assert await asyncio.wait_for(small.result(), WAIT) == "small"
    with pytest.raises(OutOfMemory):
        await asyncio.wait_for(big.result(), WAIT)
    assert small.snapshot().batch_size == 1
    assert executor.effective_max_batch("embed") == 1


async def test_plain_job_oom_fails_with_out_of_memory_and_next_job_runs(make: Factory) -> None:
    executor = await make()
    cause = RuntimeError("CUDA out of memory")

    def fn(ctx: JobContext) -> None:
        raise cause

    failing = executor.submit("k", fn)
    following = executor.submit("k", returns("fine"))
    with pytest.raises(OutOfMemory) as info:
        await asyncio.wait_for(failing.result(), WAIT)
    assert info.value.__cause__ is cause
    assert await asyncio.wait_for(following.result(), WAIT) == "fine"


# ---------------------------------------------------------------------------------------------
# 9. Engine errors
# ---------------------------------------------------------------------------------------------


async def test_engine_exception_fails_only_that_job(make: Factory) -> None:
    executor = await make()
    boom = ValueError("boom")

    def fn(ctx: JobContext) -> None:
        raise boom

    failing = executor.submit("k", fn)
    failing_events = failing.events()
    following = executor.submit("k", returns("next"))
    with pytest.raises(ValueError, match="boom") as info:
        await asyncio.wait_for(failing.result(), WAIT)
    assert info.value is boom
    events = await collect(failing_events)
    assert isinstance(events[-1], JobFailed)
    assert events[-1].error is boom
    assert failing.snapshot().state is JobState.FAILED
    assert await asyncio.wait_for(following.result(), WAIT) == "next"


async def test_whole_batch_error_fails_that_batch_only(make: Factory) -> None:
    executor = await make()

    def batch_fn(inputs: list[Any], contexts: list[JobContext]) -> list[Any]:
        if "boom" in inputs:
            raise ValueError("batch exploded")
        return list(inputs)

    executor.register_batch("embed", batch_fn, BatchSpec(max_batch_size=4, max_wait_ms=10))
    doomed = executor.submit("embed", batch_input="boom", batch_key=1)
    fine = executor.submit("embed", batch_input="fine", batch_key=2)
    with pytest.raises(ValueError, match="batch exploded"):
        await asyncio.wait_for(doomed.result(), WAIT)
    assert await asyncio.wait_for(fine.result(), WAIT) == "fine"


# ---------------------------------------------------------------------------------------------
# 10. Drain and close
# ---------------------------------------------------------------------------------------------


async def test_drain_refuses_new_jobs_and_finishes_queued_and_running(make: Factory) -> None:
    executor = await make()
    gate = Gate()
    running = executor.submit("slow", gate)
    queued = [executor.submit("k", returns(i)) for i in range(3)]
    await gate.wait_started()

    drain = asyncio.create_task(executor.drain(WAIT))
    await until(lambda: not executor.accepting)
    with pytest.raises(Unavailable):
        executor.submit("k", returns("late"))
    assert not drain.done()
    gate.release.set()

    assert await asyncio.wait_for(drain, WAIT) is True
    assert await running.result() == "gate"
    assert [await h.result() for h in queued] == [0, 1, 2]


async def test_drain_after_grace_cancels_what_is_left(make: Factory) -> None:
    executor = await make()
    gate = Gate()
    running = executor.submit("slow", gate)
    queued = executor.submit("k", returns("never"))
    await gate.wait_started()

    assert await asyncio.wait_for(executor.drain(0.1), WAIT) is False
    with pytest.raises(JobCancelled, match="shutting down"):
        await running.result()
    with pytest.raises(JobCancelled, match="shutting down"):
        await queued.result()
    assert running.snapshot().state is JobState.CANCELLED
    gate.release.set()


async def test_drain_with_nothing_to_do_returns_true(make: Factory) -> None:
    executor = await make()
    assert await asyncio.wait_for(executor.drain(0.0), WAIT) is True


async def test_close_cancels_jobs_and_submit_is_refused_before_start_and_after_close() -> None:
    executor = SingleFlightExecutor()
    with pytest.raises(Unavailable):
        executor.submit("k", returns(1))
    await executor.start()
    gate = Gate()
    running = executor.submit("slow", gate)
    queued = executor.submit("k", returns(2))
    await gate.wait_started()
    await asyncio.wait_for(executor.close(), WAIT)
    gate.release.set()
    with pytest.raises(JobCancelled):
        await running.result()
    with pytest.raises(JobCancelled):
        await queued.result()
    with pytest.raises(Unavailable):
        executor.submit("k", returns(3))
    assert not executor.accepting


async def test_submit_validates_its_arguments(make: Factory) -> None:
    executor = await make()
    with pytest.raises(ValueError, match="not batchable"):
        executor.submit("k")  # neither a work function nor a batch kind
    executor.register_batch("embed", lambda inputs, contexts: inputs, BatchSpec(2, 10))
    with pytest.raises(ValueError, match="not both"):
        executor.submit("embed", returns(1), batch_input="x")


# ---------------------------------------------------------------------------------------------
# 11. Heartbeats
# ---------------------------------------------------------------------------------------------


async def test_heartbeats_while_waiting_in_the_queue(make: Factory) -> None:
    executor = await make()
    gate = Gate()
    executor.submit("slow", gate)
    await gate.wait_started()

    handle = executor.submit("k", returns("ok"))
    events = handle.events(heartbeat_seconds=0.05)
    first = await next_event(events)
    assert isinstance(first, JobQueued)
    beat = await next_event(events, timeout=2.0)
    assert isinstance(beat, JobHeartbeat)
    assert beat.state is JobState.QUEUED
    assert beat.elapsed_seconds >= 0.04

    gate.release.set()
    rest = [e for e in await collect(events) if not isinstance(e, JobHeartbeat)]
    assert [type(e) for e in rest] == [JobStarted, JobFinished]


# ---------------------------------------------------------------------------------------------
# 12. Observer hooks; engine-side helpers
# ---------------------------------------------------------------------------------------------


async def test_observer_hooks_are_called(make: Factory) -> None:
    observer = RecordingObserver()
    executor = await make(observer=observer)
    executor.register_batch(
        "embed", lambda inputs, contexts: list(inputs), BatchSpec(max_batch_size=2, max_wait_ms=200)
    )
    gate = Gate()
    executor.submit("slow", gate)
    await gate.wait_started()
    plain = executor.submit("k", returns("plain"))
    dropped = executor.submit("k", returns("dropped"))
    batch = [executor.submit("embed", batch_input=i) for i in range(2)]
    dropped.cancel()
    gate.release.set()
    await asyncio.wait_for(asyncio.gather(plain.result(), *(h.result() for h in batch)), WAIT)

    assert observer.depths[-1] == 0
    assert max(observer.depths) == 4
    assert [kind for kind, _ in observer.started] == ["slow", "k", "embed", "embed"]
    assert all(queue_seconds >= 0 for _, queue_seconds in observer.started)
    finished = {(kind, state) for kind, state, _ in observer.finished}
    assert finished == {
        ("slow", JobState.SUCCEEDED),
        ("k", JobState.SUCCEEDED),
        ("k", JobState.CANCELLED),
        ("embed", JobState.SUCCEEDED),
    }
    assert all(run_seconds >= 0 for _, _, run_seconds in observer.finished)
    assert observer.batches == [("embed", 2)]
    assert observer.halved == []


async def test_a_failing_observer_does_not_break_serving(make: Factory) -> None:
    executor = await make(observer=BrokenObserver())
    assert await asyncio.wait_for(executor.submit("k", returns("ok")).result(), WAIT) == "ok"


def test_cancel_token_and_context_work_without_an_executor() -> None:
    context = JobContext("job", "kind")
    context.progress(1, 2, note="ignored")
    context.emit("ignored")
    context.check()
    assert not context.cancelled

    token = CancelToken()
    token.cancel(JobCancelled("first"))
    token.cancel(DeadlineExceeded("second"))
    assert token.cancelled
    assert isinstance(token.error, JobCancelled)
    with pytest.raises(JobCancelled, match="first"):
        token.raise_if_cancelled()

    expired = CancelToken(deadline=time.monotonic() - 1)
    assert expired.cancelled
    assert isinstance(expired.error, DeadlineExceeded)
    assert expired.remaining_seconds() == 0.0

    seen: list[tuple[int, int, dict[str, Any]]] = []
    outputs: list[Any] = []
    wired = JobContext(
        "job", "kind", on_progress=lambda s, t, e: seen.append((s, t, e)), on_output=outputs.append
    )
    wired.progress(3, 4, phase="decode")
    wired.emit(b"chunk")
    assert seen == [(3, 4, {"phase": "decode"})]
    assert outputs == [b"chunk"]
