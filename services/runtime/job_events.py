"""What a job tells its submitter: its state, the events of its stream, its usage and its
snapshot.

These are plain frozen values: the executor produces them on the loop thread, and servicers and
`job_protos` turn them into protobuf messages. Keeping them apart from the scheduler lets those
readers depend on the values alone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class JobState(enum.StrEnum):
    """Where a job is in its life; the three last ones are terminal. A StrEnum, so states
    compare equal to and serialize as their plain strings."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


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

    @property
    def usage(self) -> JobUsage:
        return JobUsage(self.queue_seconds, self.run_seconds, self.batch_size)
