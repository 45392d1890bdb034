"""The executor's books: a record per job, the FIFO, the moves to an end state, queue positions,
ETAs, snapshots and retention.

Split from the scheduler so each reads as one concern: `SingleFlightExecutor` (its subclass)
decides what runs on the device next, this base class keeps account of every job meanwhile.
Everything here runs on the event loop thread; only a record's `token`, `ctx`, `fn` and
`batch_input` are read on the device thread.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from services.runtime.batching import JoinSession, as_oom, detached, drop_frames
from services.runtime.errors import DeadlineExceeded, JobCancelled, NotFound, ServingError
from services.runtime.eta import RunTimeEstimator
from services.runtime.job_context import CancelToken, JobContext
from services.runtime.job_events import (
    TERMINAL_STATES,
    JobEvent,
    JobFailed,
    JobFinished,
    JobOutput,
    JobProgress,
    JobQueued,
    JobSnapshot,
    JobStarted,
    JobState,
    JobUsage,
)
from services.runtime.mailbox import LoopMailbox

if TYPE_CHECKING:  # the executor module defines them and imports this one
    from services.runtime.executor import ExecutorConfig, ExecutorObserver

log = logging.getLogger("mmserve.executor")

# The shortest retry hint QueueFull gives: sooner than this a retry only adds load.
_MIN_RETRY_AFTER_SECONDS = 0.5


class _Delivery:
    """What a job's submitter receives: its buffered events and its result (or the error as
    raised, traceback and all). The JobHandle holds it and the job lets go of it when it ends,
    so results, outputs and errors live exactly as long as the call waiting for them, never for
    the job_retention_seconds that GetJob keeps a finished job around (a soak measured ~1 MiB
    of RSS growth per retained call with real-sized results and outputs)."""

    def __init__(self) -> None:
        self.events: collections.deque[JobEvent] = collections.deque()
        self.ready = asyncio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class JobRecord:
    """One job's mutable state; touched only on the loop thread, except `token`, `ctx`, `fn`
    and `batch_input`, which the device thread reads. A finished job keeps only what snapshots
    need: its inputs are dropped once the device is done with them, its result and events go
    with its delivery, and its error is a detached copy (see `batching.detached`)."""

    def __init__(
        self,
        kind: str,
        fn: Callable[[JobContext], Any] | None,
        batch_input: Any,
        batch_key: Hashable,
        batchable: bool,
        deadline: float | None,
    ) -> None:
        self.job_id = str(uuid.uuid4())
        self.kind = kind
        # The API key id of the caller that submitted it ("" with auth off): GetJob and
        # CancelJob from another key see it as unknown.
        self.owner = ""
        self.fn = fn
        self.batch_input = batch_input
        self.batch_key = batch_key
        self.batchable = batchable
        self.token = CancelToken(deadline)
        self.ctx = JobContext(self.job_id, kind, self.token)
        self.state = JobState.QUEUED
        self.create_wall = time.time()
        self.create_mono = time.monotonic()
        self.start_wall: float | None = None
        self.start_mono: float | None = None
        self.end_wall: float | None = None
        self.end_mono: float | None = None
        self.step = 0
        self.total_steps = 0
        self.batch_size = 0
        self.error: BaseException | None = None  # detached: type, message and fields only
        self.done = asyncio.Event()
        self.delivery: _Delivery | None = _Delivery()  # None once the job ended
        self.events_taken = False
        self.last_position = 0
        self.timer: asyncio.TimerHandle | None = None

    def queue_seconds(self, now: float) -> float:
        end = self.start_mono if self.start_mono is not None else (self.end_mono or now)
        return max(0.0, end - self.create_mono)

    def run_seconds(self, now: float) -> float:
        if self.start_mono is None:
            return 0.0
        return max(0.0, (self.end_mono or now) - self.start_mono)

    def usage(self, now: float) -> JobUsage:
        return JobUsage(self.queue_seconds(now), self.run_seconds(now), self.batch_size)

    def push(self, event: JobEvent) -> None:
        """Buffers an event for `events()`. A queue or progress update replaces an unread one of
        the same type: readers only need the latest, and a job whose events are never read (a
        unary call) then buffers little. Outputs are never dropped. Nothing is buffered once
        the job ended and handed its delivery over."""
        delivery = self.delivery
        if delivery is None:
            return
        events = delivery.events
        if (
            isinstance(event, JobQueued | JobProgress)
            and events
            and type(events[-1]) is type(event)
        ):
            events[-1] = event
        else:
            events.append(event)
        delivery.ready.set()

    def release_inputs(self) -> None:
        """Drops the work function and batch input (they hold the request's decoded data);
        only once the device thread can no longer read them."""
        self.fn = None
        self.batch_input = None


def _state_for_error(error: BaseException) -> JobState:
    return JobState.CANCELLED if isinstance(error, JobCancelled) else JobState.FAILED


class JobTable:
    """Every job's record and the FIFO, for `SingleFlightExecutor` to schedule from: lookups,
    ETAs and queue positions, the moves to an end state, snapshots and retention."""

    def __init__(self, config: ExecutorConfig, observer: ExecutorObserver) -> None:
        self._config = config
        self._observer = observer
        self._eta = RunTimeEstimator(
            self._config.eta_alpha, self._config.eta_min_samples, self._config.eta_base_seconds
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mailbox: LoopMailbox | None = None  # with the loop
        self._queue: list[JobRecord] = []
        self._jobs: dict[str, JobRecord] = {}
        self._ended: collections.deque[tuple[float, str]] = collections.deque()
        self._max_batch: dict[str, int] = {}
        self._running: list[JobRecord] = []
        self._device_kind: str | None = None  # set while the device thread is busy
        self._device_since = 0.0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._cancel_listeners: dict[str, Callable[[], None]] = {}

    # --- facts and lookups -----------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def eta_for_kind(self, kind: str) -> float:
        """The estimated duration of one run (one batch call for batch kinds)."""
        return self._eta.estimate(kind)

    def effective_max_batch(self, kind: str) -> int:
        """The batch size limit now in force; lowered by OOM halving, 1 for plain kinds."""
        return self._max_batch.get(kind, 1)

    def is_batched(self, kind: str) -> bool:
        """Whether jobs of `kind` are coalesced (registered with register_batch)."""
        return kind in self._max_batch

    @property
    def max_batch_size(self) -> int:
        """The largest batch any kind may run now; 1 when nothing batches."""
        return max(self._max_batch.values(), default=1)

    def get(self, job_id: str, owner: str | None = None) -> JobSnapshot:
        """The job's snapshot; NotFound for unknown ids, ended jobs past retention and (with
        `owner`) another caller's jobs."""
        return self._snapshot(self._lookup(job_id, owner))

    def cancel(
        self, job_id: str, reason: str = "cancelled by CancelJob", owner: str | None = None
    ) -> JobSnapshot:
        """Cancels a job by id and returns its snapshot; an ended job's snapshot is returned
        unchanged. NotFound for unknown or expired ids and (with `owner`) another caller's."""
        job = self._lookup(job_id, owner)
        self._cancel_job(job, JobCancelled(reason))
        listener = self._cancel_listeners.get(job_id)
        if listener is not None:
            listener()
        return self._snapshot(job)

    def on_cancel(self, job_id: str, listener: Callable[[], None]) -> Callable[[], None]:
        """Calls `listener` (on the loop) when CancelJob names `job_id`, even after that job
        ended, so a call made of several jobs in turn (a stream of chunks) stops as a whole
        whichever of its ids the client holds. Returns the function that removes it."""
        self._cancel_listeners[job_id] = listener
        return lambda: self._cancel_listeners.pop(job_id, None)

    # --- job transitions (loop thread) -----------------------------------------------------

    def _finish(
        self, job: JobRecord, *, result: Any = None, error: BaseException | None = None
    ) -> None:
        """Ends a job once (later calls are ignored): resolves its handle, emits the terminal
        event, and, for a queued job, takes it out of the queue so the others move up."""
        if job.state in TERMINAL_STATES:
            return
        was_queued = job.state is JobState.QUEUED
        now = time.monotonic()
        job.state = JobState.SUCCEEDED if error is None else _state_for_error(error)
        job.end_mono = now
        job.end_wall = time.time()
        job.error = None if error is None else detached(error)
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        if was_queued and job in self._queue:
            self._queue.remove(job)
            self._reposition()
            self._notify(self._observer.queue_depth, len(self._queue))
            self._wake.set()
        if error is None:
            job.push(JobFinished(result, job.usage(now)))
        else:
            job.push(JobFailed(error))
        if job.delivery is not None:  # hand the outcome over; the record keeps none of it
            job.delivery.result = result
            job.delivery.error = error
            job.delivery = None
        if was_queued:  # never reached the device
            job.release_inputs()
        job.done.set()
        self._notify(self._observer.job_finished, job.kind, job.state, job.run_seconds(now))
        self._ended.append((now, job.job_id))
        self._prune()
        self._update_idle()

    # --- joined runs (see SingleFlightExecutor._run_joined) -------------------------------

    def _admit_queued(self, session: JoinSession, kind: str, members: list[JobRecord]) -> None:
        """Hands the queued jobs of `kind` that are next in the FIFO to a joined run, as long as
        it takes them."""
        for job in list(self._queue):
            if job.kind != kind or not job.batchable or not session.admit(job):
                return
            self._start_joined(job)
            members.append(job)

    def _start_joined(self, job: JobRecord) -> None:
        """A queued job that a joined run took; its batch size comes with its end (the most
        rows it decoded among)."""
        self._queue.remove(job)
        now = time.monotonic()
        job.state, job.start_mono, job.start_wall = JobState.RUNNING, now, time.time()
        job.batch_size = 1
        self._running.append(job)
        job.push(JobStarted(job.queue_seconds(now)))
        self._notify(self._observer.job_started, job.kind, job.queue_seconds(now))
        self._reposition()
        self._notify(self._observer.queue_depth, len(self._queue))

    def _joined_done(self, job: JobRecord, value: Any, batch_size: int) -> None:
        """Ends one job of a joined run (loop thread); later reports of it are ignored."""
        if job in self._running:
            self._running.remove(job)
        self._wake.set()  # its row is free: a queued job may join
        job.batch_size = max(job.batch_size, batch_size)
        if isinstance(value, BaseException):
            drop_frames(value)
            self._finish(job, error=as_oom(value, job.kind))
        elif job.state is JobState.RUNNING:
            self._eta.observe(job.kind, job.run_seconds(time.monotonic()))
            self._notify(self._observer.batch_run, job.kind, job.batch_size)
            self._finish(job, result=value)
        job.release_inputs()

    def _cancel_job(self, job: JobRecord, error: ServingError) -> None:
        if job.state in TERMINAL_STATES:
            return
        job.token.cancel(error)
        self._finish(job, error=job.token.error)

    def _cancel_all(self, reason: str) -> None:
        """Cancels every queued and running job. The queue is emptied first, so a long queue
        costs one pass instead of a reposition per job."""
        queued, self._queue = self._queue, []
        for job in [*queued, *self._running]:
            self._cancel_job(job, JobCancelled(reason))
        if queued:
            self._notify(self._observer.queue_depth, 0)
            self._wake.set()

    def _on_deadline(self, job: JobRecord) -> None:
        job.timer = None
        self._cancel_job(job, DeadlineExceeded(f"job {job.job_id} exceeded its deadline"))

    def _on_progress(self, job: JobRecord, step: int, total: int, extra: dict[str, Any]) -> None:
        if job.state is not JobState.RUNNING:
            return
        now = time.monotonic()
        job.step = step
        job.total_steps = total
        job.push(JobProgress(step, total, job.run_seconds(now), self._run_eta(job, now), extra))

    def _on_output(self, job: JobRecord, payload: Any) -> None:
        if job.state is JobState.RUNNING:
            job.push(JobOutput(payload))

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        """Hands a device-thread report to the loop thread; dropped if the loop is gone."""
        mailbox = self._mailbox
        if mailbox is not None:
            mailbox.post(callback, *args)

    # --- bookkeeping -----------------------------------------------------------------------

    def _lookup(self, job_id: str, owner: str | None = None) -> JobRecord:
        self._prune()
        job = self._jobs.get(job_id)
        # Another key's job reads exactly like an unknown one: a leaked id confirms nothing.
        if job is None or (owner is not None and job.owner != owner):
            raise NotFound(f"job {job_id} not found (unknown, or ended and expired)")
        return job

    def _prune(self) -> None:
        """Forgets ended jobs past retention, and the oldest ones beyond max_retained_jobs."""
        now = time.monotonic()
        retention = self._config.job_retention_seconds
        while self._ended:
            ended_at, job_id = self._ended[0]
            if len(self._ended) > self._config.max_retained_jobs or now - ended_at >= retention:
                self._ended.popleft()
                self._jobs.pop(job_id, None)
            else:
                break

    def _update_idle(self) -> None:
        if not self._queue and self._device_kind is None:
            self._idle.set()
        else:
            self._idle.clear()

    def _running_remaining(self, now: float) -> float:
        if self._device_kind is None:
            return 0.0
        return max(0.0, self._eta.estimate(self._device_kind) - (now - self._device_since))

    def _run_eta(self, job: JobRecord, now: float) -> float:
        """Time left for a running job: from its progress when it reports any, else the EMA."""
        elapsed = job.run_seconds(now)
        if job.step > 0 and job.total_steps > 0:
            return max(0.0, elapsed / job.step * (job.total_steps - job.step))
        return max(0.0, self._eta.estimate(job.kind) - elapsed)

    def _queue_etas(self, upto: int | None = None) -> list[float]:
        """Seconds until each queued job (through index `upto`) starts: what is left of the
        running job plus the estimates of the jobs ahead. Batchable jobs ahead with the same
        kind and key count as one run per effective_max_batch of them."""
        now = time.monotonic()
        total = self._running_remaining(now)
        groups: dict[tuple[str, Hashable], int] = {}
        etas: list[float] = []
        last = len(self._queue) - 1 if upto is None else upto
        for job in self._queue[: last + 1]:
            etas.append(total)
            if job.batchable:
                key = (job.kind, job.batch_key)
                count = groups.get(key, 0)
                if count % self.effective_max_batch(job.kind) == 0:
                    total += self._eta.estimate(job.kind)
                groups[key] = count + 1
            else:
                total += self._eta.estimate(job.kind)
        return etas

    def _reposition(self) -> None:
        """Sends JobQueued to every queued job whose position changed."""
        etas = self._queue_etas()
        length = len(self._queue)
        for index, job in enumerate(self._queue):
            position = index + 1
            if job.last_position != position:
                job.last_position = position
                job.push(JobQueued(position, length, etas[index]))

    def _retry_after(self) -> float:
        """When a slot is likely to free: once the running job ends, or the head's run."""
        now = time.monotonic()
        remaining = self._running_remaining(now)
        if remaining <= 0 and self._queue:
            remaining = self._eta.estimate(self._queue[0].kind)
        return max(_MIN_RETRY_AFTER_SECONDS, remaining)

    def _snapshot(self, job: JobRecord) -> JobSnapshot:
        now = time.monotonic()
        position = 0
        eta = 0.0
        if job.state is JobState.QUEUED and job in self._queue:
            index = self._queue.index(job)
            position = index + 1
            eta = self._queue_etas(upto=index)[-1]
        elif job.state is JobState.RUNNING:
            eta = self._run_eta(job, now)
        run_seconds = job.run_seconds(now)
        return JobSnapshot(
            job_id=job.job_id,
            kind=job.kind,
            state=job.state,
            position=position,
            queue_length=len(self._queue),
            eta_seconds=eta,
            step=job.step,
            total_steps=job.total_steps,
            elapsed_seconds=run_seconds,
            create_time=job.create_wall,
            start_time=job.start_wall,
            end_time=job.end_wall,
            error=job.error,
            queue_seconds=job.queue_seconds(now),
            run_seconds=run_seconds,
            batch_size=job.batch_size,
        )

    def _notify(self, hook: Callable[..., None], *args: Any) -> None:
        try:
            hook(*args)
        except Exception:
            log.exception("executor observer hook %s failed", getattr(hook, "__name__", hook))
