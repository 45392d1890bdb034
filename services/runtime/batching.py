"""Micro-batching: how jobs of a batchable kind are coalesced, and how one batch runs on the
device thread.

A batch is one model call for many callers, so one caller's bad input or one batch too big for
the device must not fail the others: the runner splits a failing batch in halves until the
culprit fails alone, and an out-of-memory error also lowers the batch size for later batches.
The runner shares no state with the event loop; it returns a `BatchReport` that the executor
applies on the loop thread. The error helpers here also serve the executor's plain jobs, which
fail in the same ways.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.runtime.errors import OutOfMemory, is_out_of_memory
from services.runtime.job_context import CancelToken, JobContext

# A batch function: `fn(inputs, contexts) -> outputs`, one output (or Exception) per input.
BatchFn = Callable[[list[Any], list[JobContext]], list[Any]]

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


class BatchJob(Protocol):
    """What the runner reads from a queued job; the executor's job records provide it."""

    job_id: str
    token: CancelToken
    batch_input: Any
    ctx: JobContext


@dataclass
class Outcome:
    ok: bool
    value: Any  # the result, or the exception when not ok
    batch_size: int


@dataclass
class BatchReport:
    """What one batch dispatch did on the device thread, applied afterwards on the loop."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)
    calls: list[int] = field(default_factory=list)
    halvings: list[int] = field(default_factory=list)


def detached(error: BaseException) -> BaseException:
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


def drop_frames(error: BaseException | None) -> None:
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


def as_oom(error: BaseException, kind: str) -> BaseException:
    """Turns a device OOM (torch's, MemoryError) into OutOfMemory so clients get
    RESOURCE_EXHAUSTED; other errors are returned unchanged."""
    if isinstance(error, OutOfMemory) or not is_out_of_memory(error):
        return error
    wrapped = OutOfMemory(f"out of device memory running a {kind} job: {error}")
    wrapped.__cause__ = error
    return wrapped


def call_batch(kind: str, fn: BatchFn, jobs: Sequence[BatchJob]) -> BatchReport:
    """Runs on the device thread: one call for the batch, split in halves on OOM (recursively)
    so a batch too big for the device still completes. Any other error splits it too, so the
    job that makes the model raise fails alone instead of taking the other callers' jobs in its
    batch down with it (only OOM lowers the batch size for later batches). Shares no state
    with the loop; the report is applied there."""
    report = BatchReport()

    def run(group: Sequence[BatchJob]) -> None:
        live: list[BatchJob] = []
        for job in group:
            if job.token.cancelled:
                report.outcomes[job.job_id] = Outcome(False, job.token.error, len(group))
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
            error = as_oom(exc, kind)
            for job in live:
                report.outcomes[job.job_id] = Outcome(False, error, size)
            return
        if not isinstance(results, list | tuple) or len(results) != size:
            count = len(results) if isinstance(results, list | tuple) else type(results).__name__
            error = RuntimeError(f"{kind} batch function returned {count} results for {size}")
            for job in live:
                report.outcomes[job.job_id] = Outcome(False, error, size)
            return
        for job, value in zip(live, results, strict=True):
            if isinstance(value, Exception):
                report.outcomes[job.job_id] = Outcome(False, as_oom(value, kind), size)
            else:
                report.outcomes[job.job_id] = Outcome(True, value, size)

    run(jobs)
    return report


# --------------------------------------------------------------------------------------------
# Joinable kinds: one long device run that jobs join and leave one by one
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JoinSpec:
    """A joinable kind (iteration-level batching): one device run serves up to `max_rows` jobs
    at a time; a job that arrives while it runs joins at the run's next step instead of waiting
    for the whole run, and each job ends as soon as its own work does."""

    max_rows: int

    def __post_init__(self) -> None:
        if self.max_rows < 1:
            raise ValueError("max_rows must be >= 1")


class JoinSession:
    """The hand-over between the loop thread, which admits jobs, and the device thread, which
    runs them step by step and reports each job's end. The run ends once it has no job and no
    newcomer: `take` then closes the session under the same lock `admit` takes, so a job is
    either taken by this run or left in the queue for the next one, never lost between them."""

    def __init__(
        self, max_rows: int, on_done: Callable[[BatchJob, Any, int], None] | None = None
    ) -> None:
        self.max_rows = max_rows
        self._on_done = on_done
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._waiting: list[BatchJob] = []
        self._active = 0  # jobs taken and not yet done
        self.closed = False

    # --- loop thread -------------------------------------------------------------------------

    def admit(self, job: BatchJob) -> bool:
        """Hands a job to the run; False when the run has ended or is full (the job stays
        queued for a later run)."""
        with self._lock:
            if self.closed or self._active + len(self._waiting) >= self.max_rows:
                return False
            self._waiting.append(job)
            self._arrived.notify()
            return True

    @property
    def room(self) -> int:
        with self._lock:
            return 0 if self.closed else self.max_rows - self._active - len(self._waiting)

    # --- device thread -----------------------------------------------------------------------

    def take(self, limit: int | None = None, wait_seconds: float = 0.0) -> list[BatchJob] | None:
        """Newcomers admitted since the last call (at most `limit`); None closes the run when
        nothing is active or waiting. With nothing active, waits up to `wait_seconds` for a
        newcomer before closing."""
        with self._lock:
            if not self._waiting and self._active == 0 and wait_seconds > 0:
                self._arrived.wait(wait_seconds)
            if not self._waiting and self._active == 0:
                self.closed = True
                return None
            count = len(self._waiting) if limit is None else max(0, limit)
            taken, self._waiting = self._waiting[:count], self._waiting[count:]
            self._active += len(taken)
            return taken

    def done(self, job: BatchJob, value: Any, batch_size: int) -> None:
        """Ends one taken job: `value` is its result or its Exception; `batch_size` the most
        rows it ran among."""
        with self._lock:
            self._active -= 1
        if self._on_done is not None:
            self._on_done(job, value, batch_size)

    def fail_rest(self, error: BaseException) -> None:
        """Closes the run after the device function raised: every job still waiting gets the
        error (the function answered its own taken jobs or leaves them to the caller)."""
        with self._lock:
            self.closed = True
            waiting, self._waiting = self._waiting, []
            self._active += len(waiting)
        for job in waiting:
            self.done(job, error, 0)


# A joined run: `fn(session)` on the device thread, taking jobs with session.take() between its
# steps and ending each with session.done().
JoinFn = Callable[[JoinSession], None]


def call_joined(fn: JoinFn, session: JoinSession) -> None:
    """Runs on the device thread: the joined run, closed when it ends however it ends (the
    executor fails the jobs it left unanswered)."""
    try:
        fn(session)
    except BaseException as exc:
        session.fail_rest(exc)
        raise
    finally:
        session.closed = True
