"""Single-flight job executor: one model job on the device at a time, the rest in a bounded FIFO.

Why single flight: a GPU (or a CPU-bound model) does one forward pass well and several badly;
running jobs one after another gives predictable latency, honest queue positions and ETAs, and
never two jobs fighting for device memory. Why a bounded queue: a client told "queue full, retry
in N seconds" at once is better served than one that waits minutes for a timeout.

How it runs: `submit` (on the event loop thread) puts a job in the FIFO and returns a `JobHandle`.
One scheduler task on the loop takes the next job (or micro-batch), runs it on ONE dedicated
device thread with `loop.run_in_executor`, and resolves the job. Work functions never touch the
loop: they get a `JobContext` whose `progress`/`emit` hop back to the loop thread with
`call_soon_threadsafe`, and whose `check()` raises once the job is cancelled or past its deadline.

Cancellation is cooperative on the device: a cancelled running job fails its handle at once, but
the device stays busy until the work function returns, so the next job never overlaps it. A work
function that never calls `ctx.check()` blocks the device (and drain/close) until it returns.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from services.runtime.batching import (
    RETURN_WAIT_SHARE,
    BatchFn,
    BatchSpec,
    ExpectedJob,
    JoinFn,
    JoinSession,
    JoinSpec,
    as_oom,
    call_batch,
    call_joined,
    drop_frames,
)
from services.runtime.errors import DeadlineExceeded, JobCancelled, QueueFull, Unavailable
from services.runtime.eta import RunTimeEstimator
from services.runtime.job_context import CancelToken, JobContext
from services.runtime.job_events import (
    TERMINAL_STATES,
    JobEvent,
    JobFailed,
    JobFinished,
    JobHeartbeat,
    JobOutput,
    JobProgress,
    JobQueued,
    JobSnapshot,
    JobStarted,
    JobState,
    JobUsage,
)
from services.runtime.job_table import JobRecord, JobTable
from services.runtime.mailbox import LoopMailbox

# Engines, servicers and tests import all of these from here, wherever they are defined.
__all__ = [
    "BatchSpec",
    "CancelToken",
    "ExecutorConfig",
    "ExecutorObserver",
    "ExpectedJob",
    "JobContext",
    "JobEvent",
    "JobFailed",
    "JobFinished",
    "JobHandle",
    "JobHeartbeat",
    "JobOutput",
    "JobProgress",
    "JobQueued",
    "JobSnapshot",
    "JobStarted",
    "JobState",
    "JobUsage",
    "JoinSession",
    "JoinSpec",
    "NullObserver",
    "RunTimeEstimator",
    "SingleFlightExecutor",
]

log = logging.getLogger("mmserve.executor")

# A cancel this close to a job's deadline is the deadline passing (see JobHandle.cancel).
_DEADLINE_SLACK_SECONDS = 0.05

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Configuration and hooks
# --------------------------------------------------------------------------------------------


@dataclass
class ExecutorConfig:
    max_queue_size: int = 1000
    eta_alpha: float = 0.2
    eta_min_samples: int = 3
    eta_base_seconds: float = 5.0
    job_retention_seconds: float = 600.0
    max_retained_jobs: int = 10000

    def __post_init__(self) -> None:
        if self.max_queue_size < 0:
            raise ValueError("max_queue_size must be >= 0")
        if not 0.0 < self.eta_alpha <= 1.0:
            raise ValueError("eta_alpha must be in (0, 1]")
        if self.eta_min_samples < 1:
            raise ValueError("eta_min_samples must be >= 1")
        if self.eta_base_seconds < 0 or self.job_retention_seconds < 0:
            raise ValueError("eta_base_seconds and job_retention_seconds must be >= 0")
        if self.max_retained_jobs < 0:
            raise ValueError("max_retained_jobs must be >= 0")


class ExecutorObserver(Protocol):
    """Metrics hooks, called on the loop thread; they must be quick and must not raise (errors
    are logged and ignored so metrics never break serving)."""

    def queue_depth(self, depth: int) -> None: ...
    def job_started(self, kind: str, queue_seconds: float) -> None: ...
    def job_finished(self, kind: str, state: JobState, run_seconds: float) -> None: ...
    def batch_run(self, kind: str, size: int) -> None: ...
    def oom_halved(self, kind: str, new_max_batch: int) -> None: ...


class NullObserver:
    """The default observer: records nothing."""

    def queue_depth(self, depth: int) -> None:
        pass

    def job_started(self, kind: str, queue_seconds: float) -> None:
        pass

    def job_finished(self, kind: str, state: JobState, run_seconds: float) -> None:
        pass

    def batch_run(self, kind: str, size: int) -> None:
        pass

    def oom_halved(self, kind: str, new_max_batch: int) -> None:
        pass


def _call_plain(job: JobRecord) -> Any:
    """Runs on the device thread. A job cancelled between dispatch and now never starts."""
    job.token.raise_if_cancelled()
    assert job.fn is not None
    return job.fn(job.ctx)


# --------------------------------------------------------------------------------------------
# Public handle and executor
# --------------------------------------------------------------------------------------------


class JobHandle:
    """The submitter's view of one job: await its result, stream its events, or cancel it."""

    def __init__(self, executor: SingleFlightExecutor, job: JobRecord) -> None:
        self._executor = executor
        self._job = job
        assert job.delivery is not None, "a handle is made when its job is submitted"
        self._delivery = job.delivery
        self.job_id = job.job_id

    @property
    def state(self) -> JobState:
        return self._job.state

    def done(self) -> bool:
        return self._job.state in TERMINAL_STATES

    async def result(self) -> Any:
        """The work function's return value; raises the job's error (JobCancelled,
        DeadlineExceeded, OutOfMemory, or the engine's exception unchanged). A cancel resolves
        this at once, even while the work function is still winding down on the device."""
        await self._job.done.wait()
        if self._delivery.error is not None:
            raise self._delivery.error
        return self._delivery.result

    def events(self, heartbeat_seconds: float | None = None) -> AsyncIterator[JobEvent]:
        """The job's events in order, ending after JobFinished or JobFailed (failures are
        events, not exceptions). With `heartbeat_seconds`, a JobHeartbeat comes whenever nothing
        else was yielded for that long. Can be called once per job."""
        if self._job.events_taken:
            raise RuntimeError(f"events() of job {self.job_id} was already called")
        if heartbeat_seconds is not None and heartbeat_seconds <= 0:
            raise ValueError("heartbeat_seconds must be > 0")
        self._job.events_taken = True
        return self._iter_events(heartbeat_seconds)

    async def _iter_events(self, heartbeat_seconds: float | None) -> AsyncIterator[JobEvent]:
        job, delivery = self._job, self._delivery
        last_yield = time.monotonic()
        while True:
            while delivery.events:
                event = delivery.events.popleft()
                yield event
                if isinstance(event, JobFinished | JobFailed):
                    return
                last_yield = time.monotonic()
            delivery.ready.clear()
            if heartbeat_seconds is None:
                await delivery.ready.wait()
                continue
            wait = last_yield + heartbeat_seconds - time.monotonic()
            if wait > 0:
                try:
                    async with asyncio.timeout(wait):
                        await delivery.ready.wait()
                    continue
                except TimeoutError:
                    pass
            if not delivery.events:
                yield JobHeartbeat(job.state, time.monotonic() - job.create_mono)
                last_yield = time.monotonic()

    def cancel(self, reason: str = "cancelled by client") -> None:
        """Cancels the job (no-op once it ended): a queued job leaves the queue at once; a
        running one fails now and stops at its next `ctx.check()`. A cancel at the job's
        deadline is recorded as DeadlineExceeded: gRPC cancels a call whose deadline passed at
        the moment the job's own deadline timer fires (both are the client's deadline), and
        whichever runs first, the job ended because its deadline passed."""
        job = self._job
        deadline = job.token.deadline
        if deadline is not None and time.monotonic() >= deadline - _DEADLINE_SLACK_SECONDS:
            error = DeadlineExceeded(f"job {job.job_id} exceeded its deadline")
            self._executor._cancel_job(job, error)
            return
        self._executor._cancel_job(job, JobCancelled(reason))

    def snapshot(self) -> JobSnapshot:
        return self._executor._snapshot(self._job)


class SingleFlightExecutor(JobTable):
    """Runs model jobs one at a time on a dedicated device thread, FIFO, with a bounded queue,
    per-kind ETAs, deadlines, cancellation, micro-batching, OOM halving and graceful drain.
    Its base, `JobTable`, keeps the job records it schedules from and answers `get`, `cancel`,
    `queue_depth`, `eta_for_kind` and `effective_max_batch`.

    Everything except the work functions runs on the event loop thread; call `submit`, `get`,
    `cancel` and the handle's methods from there. `register_batch` may be called from any thread
    before jobs of that kind are submitted.
    """

    def __init__(
        self, config: ExecutorConfig | None = None, observer: ExecutorObserver | None = None
    ) -> None:
        super().__init__(
            config if config is not None else ExecutorConfig(),
            observer if observer is not None else NullObserver(),
        )
        self._device: ThreadPoolExecutor | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._batches: dict[str, tuple[BatchFn, BatchSpec]] = {}
        self._joins: dict[str, tuple[JoinFn, JoinSpec]] = {}
        # Announced batchable jobs not yet submitted, per (kind, batch key).
        self._expected: collections.Counter[tuple[str, Hashable]] = collections.Counter()
        # (kind, batch key) -> (until when, jobs wanted): the demand a batch left behind it
        # (BatchSpec.max_return_wait_ms).
        self._returning: dict[tuple[str, Hashable], tuple[float, int]] = {}
        self._draining = False
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts the device thread and the scheduler task on the running loop."""
        if self._closed:
            raise RuntimeError("executor is closed")
        if self._scheduler is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._mailbox = LoopMailbox(self._loop)
        self._device = ThreadPoolExecutor(max_workers=1, thread_name_prefix="device")
        self._scheduler = self._loop.create_task(self._schedule(), name="executor-scheduler")
        self._scheduler.add_done_callback(self._scheduler_done)

    async def drain(self, grace_seconds: float) -> bool:
        """Stops accepting jobs and lets queued and running ones finish. After `grace_seconds`
        whatever is left is cancelled ("server shutting down"). True if all finished in time.
        A running work function that ignores cancellation keeps the device busy after this."""
        self._draining = True
        self._wake.set()
        self._update_idle()
        try:
            async with asyncio.timeout(max(0.0, grace_seconds)):
                await self._idle.wait()
            return True
        except TimeoutError:
            self._cancel_all("server shutting down")
            return False

    async def close(self) -> None:
        """Cancels every job left ("executor closed"), stops the scheduler and releases the
        device thread without waiting for a work function still running there (Python still
        joins that thread at interpreter exit, so a function that never returns delays exit)."""
        if self._closed:
            return
        self._closed = True
        self._draining = True
        self._cancel_all("executor closed")
        self._wake.set()
        if self._scheduler is not None:
            self._scheduler.cancel()
            await asyncio.gather(self._scheduler, return_exceptions=True)
        if self._device is not None:
            self._device.shutdown(wait=False, cancel_futures=True)

    # --- configuration and facts -----------------------------------------------------------

    def register_batch(self, kind: str, fn: BatchFn, spec: BatchSpec) -> None:
        """Makes `kind` batchable: jobs submitted with `batch_input` are coalesced into calls
        `fn(inputs, contexts) -> outputs` (same length; an Exception element fails its job)."""
        self._batches[kind] = (fn, spec)
        self._max_batch[kind] = spec.max_batch_size

    def register_joinable(self, kind: str, fn: JoinFn, spec: JoinSpec) -> None:
        """Makes `kind` joinable: its jobs (`batch_input`) join one running `fn(session)` between
        its steps and end one by one (batching.JoinSession)."""
        self._joins[kind] = (fn, spec)
        self._max_batch[kind] = spec.max_rows

    def expect(self, kind: str, batch_key: Hashable = None) -> ExpectedJob:
        """Announces a job of batchable `kind` whose inputs are being prepared (decoded,
        preprocessed), so a batch of that kind about to start waits for it (up to the kind's
        max_arrival_wait_ms) instead of leaving it for the next, smaller batch. Call it on the
        loop thread; close the returned handle once the job is submitted or will not be."""
        spec = self._batches.get(kind)
        if spec is None or spec[1].max_arrival_wait_ms <= 0:
            return ExpectedJob(None)
        key = (kind, batch_key)
        self._expected[key] += 1

        def arrived() -> None:
            self._expected[key] -= 1
            if self._expected[key] <= 0:
                del self._expected[key]
            self._wake.set()

        return ExpectedJob(arrived)

    @property
    def accepting(self) -> bool:
        return self._scheduler is not None and not self._draining and not self._closed

    # --- jobs ------------------------------------------------------------------------------

    def submit(
        self,
        kind: str,
        fn: Callable[[JobContext], Any] | None = None,
        *,
        batch_input: Any = None,
        batch_key: Hashable = None,
        deadline: float | None = None,
        owner: str = "",
    ) -> JobHandle:
        """Queues a job and returns at once. Pass `fn` for a plain job, or `batch_input` for a
        kind registered with `register_batch`. `deadline` is an absolute time.monotonic() value
        covering queue and run; `owner` the submitting caller's key id. Raises QueueFull when
        the queue is full and Unavailable when the executor is not started, draining or closed.
        Call it on the loop thread."""
        if self._closed or self._draining:
            raise Unavailable("server is shutting down; retry on another replica", 1.0)
        if self._scheduler is None or self._loop is None:
            raise Unavailable("executor is not started", 1.0)
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError("submit() must be called on the executor's event loop thread")
        if fn is None:
            if kind not in self._batches and kind not in self._joins:
                raise ValueError(f"job kind {kind!r} is not batchable; pass a work function")
        elif batch_input is not None:
            raise ValueError("pass either a work function or batch_input, not both")
        self._prune()
        if len(self._queue) >= self._config.max_queue_size:
            raise QueueFull(
                f"job queue is full ({len(self._queue)} waiting); retry later",
                retry_after_seconds=self._retry_after(),
            )
        job = JobRecord(kind, fn, batch_input, batch_key, fn is None, deadline)
        job.owner = owner
        job.ctx = JobContext(
            job.job_id,
            kind,
            job.token,
            on_progress=lambda step, total, extra: self._post(
                self._on_progress, job, step, total, extra
            ),
            on_output=lambda payload: self._post(self._on_output, job, payload),
        )
        self._jobs[job.job_id] = job
        self._queue.append(job)
        position = len(self._queue)
        job.last_position = position
        job.push(JobQueued(position, position, self._queue_etas(upto=position - 1)[-1]))
        if deadline is not None:
            job.timer = self._loop.call_later(
                max(0.0, deadline - time.monotonic()), self._on_deadline, job
            )
        self._notify(self._observer.queue_depth, len(self._queue))
        self._idle.clear()
        self._wake.set()
        return JobHandle(self, job)

    # --- scheduling ------------------------------------------------------------------------

    async def _schedule(self) -> None:
        """The one scheduler task: take the next job or batch, run it on the device, repeat."""
        while not self._closed:
            jobs = await self._next_jobs()
            if not jobs:
                continue
            try:
                await self._dispatch(jobs)
            except Exception as exc:  # a bug here must not stall every later job
                log.exception("executor failed to run %d job(s)", len(jobs))
                for job in jobs:
                    self._finish(job, error=exc)
                self._device_kind = None
                self._running = []
                self._update_idle()

    async def _next_jobs(self) -> list[JobRecord]:
        """Waits for the head of the queue; for a batchable head, also waits (up to its
        max_wait_ms from submission) for companions with the same kind and batch key, and
        (up to max_arrival_wait_ms from now) for announced ones still being prepared."""
        while not self._closed:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            head = self._queue[0]
            if not head.batchable or head.kind in self._joins:
                return [head]
            _, spec = self._batches[head.kind]
            wait_until = head.create_mono + spec.max_wait_ms / 1000.0
            arrivals_until = time.monotonic() + spec.max_arrival_wait_ms / 1000.0
            while head.state is JobState.QUEUED and not self._closed:
                limit = self.effective_max_batch(head.kind)
                mates = [
                    job
                    for job in self._queue
                    if job.batchable and job.kind == head.kind and job.batch_key == head.batch_key
                ]
                until = wait_until
                if self._expected[(head.kind, head.batch_key)] > 0:
                    until = max(until, arrivals_until)
                returning_until, wanted = self._returning.get((head.kind, head.batch_key), (0.0, 0))
                if len(mates) < min(wanted, limit):
                    until = max(until, returning_until)
                remaining = until - time.monotonic()
                if len(mates) >= limit or remaining <= 0:
                    return mates[:limit]
                self._wake.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        return []

    async def _dispatch(self, jobs: list[JobRecord]) -> None:
        """Moves `jobs` from the queue to the device, runs them, and resolves them."""
        now = time.monotonic()
        for job in jobs:
            self._queue.remove(job)
        live = [job for job in jobs if not job.token.cancelled]
        # Mark the device busy before anything can signal idle, so drain() never sees a gap.
        self._running = live
        if live:
            self._device_kind = live[0].kind
            self._device_since = now
        for job in jobs:
            if job not in live:  # deadline passed just now, before its timer fired
                self._finish(job, error=job.token.error)
        self._reposition()
        self._notify(self._observer.queue_depth, len(self._queue))
        if not live:
            self._update_idle()
            return
        wall = time.time()
        for job in live:
            job.state = JobState.RUNNING
            job.start_mono = now
            job.start_wall = wall
            job.batch_size = len(live)
            queue_seconds = job.queue_seconds(now)
            job.push(JobStarted(queue_seconds))
            self._notify(self._observer.job_started, job.kind, queue_seconds)
        try:
            if live[0].batchable and live[0].kind in self._joins:
                await self._run_joined(live)
            elif live[0].batchable:
                await self._run_batch(live)
            else:
                await self._run_plain(live[0])
        finally:
            self._device_kind = None
            self._running = []
            for job in live:  # the device thread is done with them
                job.release_inputs()
            self._update_idle()

    async def _run_plain(self, job: JobRecord) -> None:
        assert self._loop is not None
        started = time.monotonic()
        try:
            value = await self._loop.run_in_executor(self._device, _call_plain, job)
        except Exception as exc:
            drop_frames(exc)
            self._finish(job, error=as_oom(exc, job.kind))
            return
        self._eta.observe(job.kind, time.monotonic() - started)
        self._finish(job, result=value)

    async def _run_batch(self, jobs: list[JobRecord]) -> None:
        assert self._loop is not None
        kind = jobs[0].kind
        fn, spec = self._batches[kind]
        started = time.monotonic()
        report = await self._loop.run_in_executor(self._device, call_batch, kind, fn, jobs)
        ended = time.monotonic()
        duration = ended - started
        if spec.max_return_wait_ms > 0:
            key = jobs[0].batch_key
            queued = sum(1 for j in self._queue if j.kind == kind and j.batch_key == key)
            wait = min(spec.max_return_wait_ms / 1000.0, duration * RETURN_WAIT_SHARE)
            self._returning[(kind, key)] = (ended + wait, len(jobs) + queued)
        for size in report.calls:
            self._notify(self._observer.batch_run, kind, size)
        for new_max in report.halvings:
            if new_max < self.effective_max_batch(kind):
                self._max_batch[kind] = new_max
                log.warning("out of memory in a %s batch; max batch now %d", kind, new_max)
                self._notify(self._observer.oom_halved, kind, new_max)
        if not report.halvings and any(outcome.ok for outcome in report.outcomes.values()):
            self._eta.observe(kind, duration)
        for job in jobs:
            outcome = report.outcomes.get(job.job_id)
            if outcome is None:
                self._finish(job, error=RuntimeError("batch produced no outcome for this job"))
                continue
            job.batch_size = outcome.batch_size
            if outcome.ok:
                self._finish(job, result=outcome.value)
            else:
                drop_frames(outcome.value)
                self._finish(job, error=outcome.value)

    async def _run_joined(self, jobs: list[JobRecord]) -> None:
        """One joined run: admits queued jobs of its kind while they are next in the FIFO (one
        of another kind ahead stops admission: the run drains and that job goes next)."""
        kind = jobs[0].kind
        fn, spec = self._joins[kind]
        session = JoinSession(spec.max_rows, functools.partial(self._post, self._joined_done))
        members = [job for job in jobs if session.admit(job)]  # the first run has room
        run = asyncio.get_running_loop().run_in_executor(self._device, call_joined, fn, session)
        while not run.done():
            self._wake.clear()
            self._admit_queued(session, kind, members)
            woken = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait((run, woken), return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
        error = run.exception()
        for job in members:  # what the run left unanswered (it raised)
            self._joined_done(job, error or RuntimeError("the run left this job unanswered"), 0)

    # --- the device thread, outside jobs ---------------------------------------------------

    async def run_on_device(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs `fn(*args)` on the device thread that jobs run on and returns its result (its
        error propagates). For work that must share the jobs' thread, such as loading and
        warming up the model: GNU OpenMP keeps a thread team per calling thread, and two teams
        on two cores slowed a diffusers pipeline from 0.99 s to 1.45 s per image. It is not a
        job (no queue slot, ETA or cancellation); the device thread's single worker keeps it
        from overlapping a job, and a job dispatched meanwhile waits for it there, counting
        the wait as run time. RuntimeError if the executor is not started, or closed."""
        if self._closed:
            raise RuntimeError("executor is closed")
        if self._device is None:
            raise RuntimeError("executor is not started")
        return await asyncio.get_running_loop().run_in_executor(self._device, fn, *args)

    def _scheduler_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("executor scheduler stopped", exc_info=task.exception())
