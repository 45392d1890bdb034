"""What a work function sees on the device thread: its identity, its cancellation and the
channels for progress and streamed output.

Engines are written against this and not against the scheduler, so it lives apart from it:
it holds no asyncio or gRPC objects, and an engine (or its test) can be driven with a bare
`JobContext("id", "kind")`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from services.runtime.errors import DeadlineExceeded, ServingError


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
