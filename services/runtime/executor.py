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
import contextlib
import enum
import inspect
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.runtime.errors import (
    DeadlineExceeded,
    JobCancelled,
    NotFound,
    OutOfMemory,
    QueueFull,
    ServingError,
    Unavailable,
    is_out_of_memory,
)

log = logging.getLogger("mmserve.executor")

# The shortest retry hint QueueFull gives: sooner than this a retry only adds load.
_MIN_RETRY_AFTER_SECONDS = 0.5
# A cancel this close to a job's deadline is the deadline passing (see JobHandle.cancel).
_DEADLINE_SLACK_SECONDS = 0.05


class JobState(enum.StrEnum):
    """Where a job is in its life; the three last ones are terminal. A StrEnum, so states
    compare equal to and serialize as their plain strings."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


# --------------------------------------------------------------------------------------------
# What engines see
# --------------------------------------------------------------------------------------------


class CancelToken:
    """Whether a job should stop, shared by the loop thread and the device thread.

    The loop cancels it (client went away, CancelJob, drain) and the device thread polls it. The
    deadline is an absolute `time.monotonic()` value covering queue and run, so a job that waited
    long has less time to run; it is checked on every poll, so the device thread sees it even
    before the loop's timer fires.
    """

    def __init__(self, deadline: float | None = None) -> None:
        self.deadline = deadline
        self._lock = threading.Lock()
        self._error: ServingError | None = None

    def cancel(self, error: ServingError) -> None:
        """Marks the token cancelled with `error` (JobCancelled or DeadlineExceeded); the first
        call wins, so a job reports the reason it really stopped for."""
        with self._lock:
            if self._error is None:
                self._error = error

    @property
    def cancelled(self) -> bool:
        """True once cancelled or past the deadline (the error is then DeadlineExceeded)."""
        if self._error is not None:
            return True
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.cancel(DeadlineExceeded("job deadline exceeded"))
            return True
        return False

    @property
    def error(self) -> ServingError | None:
        return self._error if self.cancelled else None

    def remaining_seconds(self) -> float | None:
        """Seconds left before the deadline (never negative), None without one; lets an engine
        pick a cheaper setting when time is short."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def raise_if_cancelled(self) -> None:
        """Raises the stored error when cancelled; engines call it between steps."""
        if self.cancelled:
            assert self._error is not None
            raise self._error


class JobContext:
    """What a work function receives on the device thread: identity, cancellation, and channels
    for progress and streamed output. It holds no asyncio or gRPC objects, so engines can be
    tested with a bare `JobContext("id", "kind")`.
    """

    def __init__(
        self,
        job_id: str,
        kind: str,
        cancel: CancelToken | None = None,
        *,
        on_progress: Callable[[int, int, dict[str, Any]], None] | None = None,
        on_output: Callable[[Any], None] | None = None,
    ) -> None:
        self.job_id = job_id
        self.kind = kind
        self.cancel = cancel if cancel is not None else CancelToken()
        self._on_progress = on_progress
        self._on_output = on_output

    @property
    def cancelled(self) -> bool:
        return self.cancel.cancelled

    def check(self) -> None:
        """Raises JobCancelled or DeadlineExceeded once the job should stop; call it between
        denoising steps or tokens so a cancel frees the device quickly."""
        self.cancel.raise_if_cancelled()

    def progress(self, step: int, total: int, **extra: Any) -> None:
        """Reports `step` of `total` (thread-safe); clients get a JobProgress event."""
        if self._on_progress is not None:
            self._on_progress(step, total, dict(extra))

    def emit(self, payload: Any) -> None:
        """Streams one piece of output (text delta, preview, audio chunk) as a JobOutput event."""
        if self._on_output is not None:
            self._on_output(payload)


# --------------------------------------------------------------------------------------------
# Events and snapshots
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobUsage:
    queue_seconds: float
    run_seconds: float
    batch_size: int


@dataclass(frozen=True)
class JobQueued:
    """The job waits: first event of every job, and again whenever its position changes.
    `eta_seconds` estimates the time until it starts."""

    position: int
    queue_length: int
    eta_seconds: float


@dataclass(frozen=True)
class JobStarted:
    queue_seconds: float


@dataclass(frozen=True)
class JobProgress:
    step: int
    total: int
    elapsed_seconds: float
    eta_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobOutput:
    payload: Any


@dataclass(frozen=True)
class JobHeartbeat:
    """Sent when nothing else was for a while, so proxies keep the stream open.
    `elapsed_seconds` counts from submission."""

    state: JobState
    elapsed_seconds: float


@dataclass(frozen=True)
class JobFinished:
    result: Any
    usage: JobUsage


@dataclass(frozen=True)
class JobFailed:
    error: BaseException


JobEvent = JobQueued | JobStarted | JobProgress | JobOutput | JobHeartbeat | JobFinished | JobFailed


@dataclass(frozen=True)
class JobSnapshot:
    """A job's state at one moment, for GetJob/CancelJob and for usage accounting."""

    job_id: str
    kind: str
    state: JobState
    position: int  # 1-based while queued, 0 otherwise
    queue_length: int
    eta_seconds: float  # queued: until start; running: until done; else 0
    step: int
    total_steps: int
    elapsed_seconds: float  # run time so far
    create_time: float  # time.time()
    start_time: float | None
    end_time: float | None
    error: BaseException | None
    queue_seconds: float
    run_seconds: float
    batch_size: int


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


# The most a return wait (BatchSpec.max_return_wait_ms) may be, as a share of the time the batch
# before it ran.
RETURN_WAIT_SHARE = 0.1


@dataclass(frozen=True)
class BatchSpec:
    """How a batchable kind is coalesced: at most `max_batch_size` jobs per call, and the oldest
    job waits at most `max_wait_ms` (counted from its submission) for companions. While jobs
    of the kind are expected (`SingleFlightExecutor.expect`: their inputs are being prepared),
    a batch about to start waits up to `max_arrival_wait_ms` more for them.

    `max_return_wait_ms`: callers that loop (send, get the answer, send again) come back a few
    milliseconds after their batch ends, just after the next batch has started without them, so
    N such callers settle into alternating batches of about N/2. When a batch ends, the callers
    it answered plus the jobs still queued are taken as the demand; the next batch waits up to
    this long (from the end of the previous one), and at most RETURN_WAIT_SHARE of the time the
    previous batch ran, until that many jobs are queued: the device idles for a small share of
    its busy time at most, whatever the batch costs. A lone caller never waits (the demand is
    the one job queued)."""

    max_batch_size: int
    max_wait_ms: float
    max_arrival_wait_ms: float = 0.0
    max_return_wait_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        waits = (self.max_wait_ms, self.max_arrival_wait_ms, self.max_return_wait_ms)
        if min(waits) < 0:
            raise ValueError("max_wait_ms, max_arrival_wait_ms and max_return_wait_ms must be >= 0")


class ExpectedJob:
    """A batchable job announced before its inputs are ready. `close()` (idempotent) withdraws
    the announcement: call it right after submitting the job, or when preparing it failed."""

    def __init__(self, on_close: Callable[[], None] | None) -> None:
        self._on_close = on_close

    def close(self) -> None:
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()


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


class RunTimeEstimator:
    """Per-kind exponential moving average of run durations.

    ETAs only need to be roughly right, and an EMA follows drift (warm caches, thermal limits)
    without keeping history. Until a kind has `min_samples` runs the base estimate is used, so
    one odd first run (compilation, cold cache) does not set every client's expectations.
    """

    def __init__(self, alpha: float, min_samples: int, base_seconds: float) -> None:
        self._alpha = alpha
        self._min_samples = min_samples
        self._base = base_seconds
        self._ema: dict[str, float] = {}
        self._samples: dict[str, int] = {}

    def observe(self, kind: str, seconds: float) -> None:
        seconds = max(0.0, seconds)
        previous = self._ema.get(kind)
        self._ema[kind] = (
            seconds if previous is None else self._alpha * seconds + (1 - self._alpha) * previous
        )
        self._samples[kind] = self._samples.get(kind, 0) + 1

    def estimate(self, kind: str) -> float:
        if self._samples.get(kind, 0) < self._min_samples:
            return self._base
        return self._ema[kind]

    def samples(self, kind: str) -> int:
        return self._samples.get(kind, 0)


# --------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------


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


class _Job:
    """One job's mutable state; touched only on the loop thread, except `token`, `ctx`, `fn`
    and `batch_input`, which the device thread reads. A finished job keeps only what snapshots
    need: its inputs are dropped once the device is done with them, its result and events go
    with its delivery, and its error is a detached copy (see `_detached`)."""

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


@dataclass
class _Outcome:
    ok: bool
    value: Any  # the result, or the exception when not ok
    batch_size: int


@dataclass
class _BatchReport:
    """What one batch dispatch did on the device thread, applied afterwards on the loop."""

    outcomes: dict[str, _Outcome] = field(default_factory=dict)
    calls: list[int] = field(default_factory=list)
    halvings: list[int] = field(default_factory=list)


def _state_for_error(error: BaseException) -> JobState:
    return JobState.CANCELLED if isinstance(error, JobCancelled) else JobState.FAILED


def _detached(error: BaseException) -> BaseException:
    """A copy of `error` for the job record GetJob reads after the job ended: same type, args
    and fields (message, violations, retry delay), without the traceback and causes. The raised
    error's traceback grows through the servicer's frames, whose locals hold the request (images,
    audio) and the call, and would keep them alive for job_retention_seconds."""
    cls = type(error)
    try:
        clone = cls.__new__(cls, *error.args)
        clone.__dict__.update(error.__dict__)
    except Exception:  # an exception type that cannot be rebuilt: keep the original
        return error
    return clone


_SUSPENDABLE = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def _drop_frames(error: BaseException | None) -> None:
    """Clears the locals of the finished plain-function frames in `error`'s traceback and in its
    causes'. Called once the device thread is done with a failed job: the engine's frames hold
    its activations, and an out-of-memory error that kept them alive would make the next job run
    out of memory too. Tracebacks still print (code and line numbers stay); only the locals go.
    Frames still executing are skipped (clear() refuses them), and so are generator and
    coroutine frames: clearing a suspended one would close it, and a cancel error raised on the
    loop thread first (by JobHandle.result) carries the awaiting coroutine's frame."""
    pending = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        tb = current.__traceback__
        while tb is not None:
            if not tb.tb_frame.f_code.co_flags & _SUSPENDABLE:
                with contextlib.suppress(RuntimeError):
                    tb.tb_frame.clear()
            tb = tb.tb_next
        pending += [current.__cause__, current.__context__]


def _as_oom(error: BaseException, kind: str) -> BaseException:
    """Turns a device OOM (torch's, MemoryError) into OutOfMemory so clients get
    RESOURCE_EXHAUSTED; other errors are returned unchanged."""
    if isinstance(error, OutOfMemory) or not is_out_of_memory(error):
        return error
    wrapped = OutOfMemory(f"out of device memory running a {kind} job: {error}")
    wrapped.__cause__ = error
    return wrapped


def _call_plain(job: _Job) -> Any:
    """Runs on the device thread. A job cancelled between dispatch and now never starts."""
    job.token.raise_if_cancelled()
    assert job.fn is not None
    return job.fn(job.ctx)


def _call_batch(
    kind: str, fn: Callable[[list[Any], list[JobContext]], list[Any]], jobs: list[_Job]
) -> _BatchReport:
    """Runs on the device thread: one call for the batch, split in halves on OOM (recursively)
    so a batch too big for the device still completes. Any other error splits it too, so the
    job that makes the model raise fails alone instead of taking the other callers' jobs in its
    batch down with it (only OOM lowers the batch size for later batches). Shares no state
    with the loop; the report is applied there."""
    report = _BatchReport()

    def run(group: list[_Job]) -> None:
        live: list[_Job] = []
        for job in group:
            if job.token.cancelled:
                report.outcomes[job.job_id] = _Outcome(False, job.token.error, len(group))
            else:
                live.append(job)
        if not live:
            return
        size = len(live)
        report.calls.append(size)
        try:
            results = fn([job.batch_input for job in live], [job.ctx for job in live])
        except Exception as exc:
            if size > 1:
                middle = (size + 1) // 2
                if is_out_of_memory(exc):
                    report.halvings.append(middle)
                run(live[:middle])
                run(live[middle:])
                return
            error = _as_oom(exc, kind)
            for job in live:
                report.outcomes[job.job_id] = _Outcome(False, error, size)
            return
        if not isinstance(results, list | tuple) or len(results) != size:
            count = len(results) if isinstance(results, list | tuple) else type(results).__name__
            error = RuntimeError(f"{kind} batch function returned {count} results for {size}")
            for job in live:
                report.outcomes[job.job_id] = _Outcome(False, error, size)
            return
        for job, value in zip(live, results, strict=True):
            if isinstance(value, Exception):
                report.outcomes[job.job_id] = _Outcome(False, _as_oom(value, kind), size)
            else:
                report.outcomes[job.job_id] = _Outcome(True, value, size)

    run(jobs)
    return report


# --------------------------------------------------------------------------------------------
# Public handle and executor
# --------------------------------------------------------------------------------------------


class JobHandle:
    """The submitter's view of one job: await its result, stream its events, or cancel it."""

    def __init__(self, executor: SingleFlightExecutor, job: _Job) -> None:
        self._executor = executor
        self._job = job
        assert job.delivery is not None, "a handle is made when its job is submitted"
        self._delivery = job.delivery
        self.job_id = job.job_id

    @property
    def state(self) -> JobState:
        return self._job.state

    def done(self) -> bool:
        return self._job.state in _TERMINAL

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


class SingleFlightExecutor:
    """Runs model jobs one at a time on a dedicated device thread, FIFO, with a bounded queue,
    per-kind ETAs, deadlines, cancellation, micro-batching, OOM halving and graceful drain.

    Everything except the work functions runs on the event loop thread; call `submit`, `get`,
    `cancel` and the handle's methods from there. `register_batch` may be called from any thread
    before jobs of that kind are submitted.
    """

    def __init__(
        self, config: ExecutorConfig | None = None, observer: ExecutorObserver | None = None
    ) -> None:
        self._config = config if config is not None else ExecutorConfig()
        self._observer: ExecutorObserver = observer if observer is not None else NullObserver()
        self._eta = RunTimeEstimator(
            self._config.eta_alpha, self._config.eta_min_samples, self._config.eta_base_seconds
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._device: ThreadPoolExecutor | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._queue: list[_Job] = []
        self._jobs: dict[str, _Job] = {}
        self._ended: collections.deque[tuple[float, str]] = collections.deque()
        self._batches: dict[
            str, tuple[Callable[[list[Any], list[JobContext]], list[Any]], BatchSpec]
        ] = {}
        self._max_batch: dict[str, int] = {}
        # Announced batchable jobs not yet submitted, per (kind, batch key).
        self._expected: collections.Counter[tuple[str, Hashable]] = collections.Counter()
        # (kind, batch key) -> (until when, jobs wanted): the demand a batch left behind it
        # (BatchSpec.max_return_wait_ms).
        self._returning: dict[tuple[str, Hashable], tuple[float, int]] = {}
        self._running: list[_Job] = []
        self._device_kind: str | None = None  # set while the device thread is busy
        self._device_since = 0.0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
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

    def register_batch(
        self,
        kind: str,
        fn: Callable[[list[Any], list[JobContext]], list[Any]],
        spec: BatchSpec,
    ) -> None:
        """Makes `kind` batchable: jobs submitted with `batch_input` are coalesced into calls
        `fn(inputs, contexts) -> outputs` (same length; an Exception element fails its job)."""
        self._batches[kind] = (fn, spec)
        self._max_batch[kind] = spec.max_batch_size

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
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def accepting(self) -> bool:
        return self._scheduler is not None and not self._draining and not self._closed

    def eta_for_kind(self, kind: str) -> float:
        """The estimated duration of one run (one batch call for batch kinds)."""
        return self._eta.estimate(kind)

    def effective_max_batch(self, kind: str) -> int:
        """The batch size limit now in force; lowered by OOM halving, 1 for plain kinds."""
        return self._max_batch.get(kind, 1)

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
            if kind not in self._batches:
                raise ValueError(f"job kind {kind!r} is not batchable; pass a work function")
        elif batch_input is not None:
            raise ValueError("pass either a work function or batch_input, not both")
        self._prune()
        if len(self._queue) >= self._config.max_queue_size:
            raise QueueFull(
                f"job queue is full ({len(self._queue)} waiting); retry later",
                retry_after_seconds=self._retry_after(),
            )
        job = _Job(kind, fn, batch_input, batch_key, fn is None, deadline)
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
        return self._snapshot(job)

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

    async def _next_jobs(self) -> list[_Job]:
        """Waits for the head of the queue; for a batchable head, also waits (up to its
        max_wait_ms from submission) for companions with the same kind and batch key, and
        (up to max_arrival_wait_ms from now) for announced ones still being prepared."""
        while not self._closed:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            head = self._queue[0]
            if not head.batchable:
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

    async def _dispatch(self, jobs: list[_Job]) -> None:
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
            if live[0].batchable:
                await self._run_batch(live)
            else:
                await self._run_plain(live[0])
        finally:
            self._device_kind = None
            self._running = []
            for job in live:  # the device thread is done with them
                job.release_inputs()
            self._update_idle()

    async def _run_plain(self, job: _Job) -> None:
        assert self._loop is not None
        started = time.monotonic()
        try:
            value = await self._loop.run_in_executor(self._device, _call_plain, job)
        except Exception as exc:
            _drop_frames(exc)
            self._finish(job, error=_as_oom(exc, job.kind))
            return
        self._eta.observe(job.kind, time.monotonic() - started)
        self._finish(job, result=value)

    async def _run_batch(self, jobs: list[_Job]) -> None:
        assert self._loop is not None
        kind = jobs[0].kind
        fn, spec = self._batches[kind]
        started = time.monotonic()
        report = await self._loop.run_in_executor(self._device, _call_batch, kind, fn, jobs)
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
                _drop_frames(outcome.value)
                self._finish(job, error=outcome.value)

    # --- job transitions (loop thread) -----------------------------------------------------

    def _finish(self, job: _Job, *, result: Any = None, error: BaseException | None = None) -> None:
        """Ends a job once (later calls are ignored): resolves its handle, emits the terminal
        event, and, for a queued job, takes it out of the queue so the others move up."""
        if job.state in _TERMINAL:
            return
        was_queued = job.state is JobState.QUEUED
        now = time.monotonic()
        job.state = JobState.SUCCEEDED if error is None else _state_for_error(error)
        job.end_mono = now
        job.end_wall = time.time()
        job.error = None if error is None else _detached(error)
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

    def _cancel_job(self, job: _Job, error: ServingError) -> None:
        if job.state in _TERMINAL:
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

    def _on_deadline(self, job: _Job) -> None:
        job.timer = None
        self._cancel_job(job, DeadlineExceeded(f"job {job.job_id} exceeded its deadline"))

    def _on_progress(self, job: _Job, step: int, total: int, extra: dict[str, Any]) -> None:
        if job.state is not JobState.RUNNING:
            return
        now = time.monotonic()
        job.step = step
        job.total_steps = total
        job.push(JobProgress(step, total, job.run_seconds(now), self._run_eta(job, now), extra))

    def _on_output(self, job: _Job, payload: Any) -> None:
        if job.state is JobState.RUNNING:
            job.push(JobOutput(payload))

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        """Hands a device-thread report to the loop thread; dropped if the loop is gone."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            loop.call_soon_threadsafe(callback, *args)

    # --- bookkeeping -----------------------------------------------------------------------

    def _lookup(self, job_id: str, owner: str | None = None) -> _Job:
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

    def _run_eta(self, job: _Job, now: float) -> float:
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

    def _snapshot(self, job: _Job) -> JobSnapshot:
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

    def _scheduler_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("executor scheduler stopped", exc_info=task.exception())
