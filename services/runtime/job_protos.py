"""Executor facts as mmserve.common.v1 messages, shared by every servicer."""

from __future__ import annotations

from typing import Protocol

from google.protobuf import timestamp_pb2

from mmserve.common.v1 import job_pb2
from services.runtime import errors
from services.runtime.executor import (
    JobHeartbeat,
    JobQueued,
    JobSnapshot,
    JobState,
)
from services.runtime.status import code_of

_STATES = {
    JobState.QUEUED: job_pb2.JOB_STATE_QUEUED,
    JobState.RUNNING: job_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: job_pb2.JOB_STATE_SUCCEEDED,
    JobState.FAILED: job_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: job_pb2.JOB_STATE_CANCELLED,
}


def job_state(state: JobState) -> job_pb2.JobState.ValueType:
    return _STATES[state]


def _timestamp(unix_seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if unix_seconds is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(unix_seconds * 1e9))
    return stamp


def queue_status(event: JobQueued) -> job_pb2.QueueStatus:
    return job_pb2.QueueStatus(
        position=event.position, queue_length=event.queue_length, eta_seconds=event.eta_seconds
    )


class StepReport(Protocol):
    """What a progress message needs (JobProgress, or a capability's preview frame)."""

    @property
    def step(self) -> int: ...
    @property
    def total(self) -> int: ...
    @property
    def elapsed_seconds(self) -> float: ...
    @property
    def eta_seconds(self) -> float: ...


def progress(event: StepReport) -> job_pb2.Progress:
    return job_pb2.Progress(
        step=event.step,
        total_steps=event.total,
        elapsed_seconds=event.elapsed_seconds,
        eta_seconds=event.eta_seconds,
    )


def heartbeat(event: JobHeartbeat) -> job_pb2.Heartbeat:
    return job_pb2.Heartbeat(state=job_state(event.state), elapsed_seconds=event.elapsed_seconds)


class Timing(Protocol):
    """What a usage message needs of a job's or a call's usage (JobUsage, operations.Usage)."""

    @property
    def queue_seconds(self) -> float: ...
    @property
    def run_seconds(self) -> float: ...
    @property
    def batch_size(self) -> int: ...


def usage(value: Timing, *, input_tokens: int = 0, output_tokens: int = 0) -> job_pb2.Usage:
    return job_pb2.Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=input_tokens + output_tokens,
        queue_seconds=value.queue_seconds,
        run_seconds=value.run_seconds,
        batch_size=value.batch_size,
    )


def job(snapshot: JobSnapshot) -> job_pb2.Job:
    message = job_pb2.Job(
        job_id=snapshot.job_id,
        kind=snapshot.kind,
        state=job_state(snapshot.state),
        create_time=_timestamp(snapshot.create_time),
        start_time=_timestamp(snapshot.start_time),
        end_time=_timestamp(snapshot.end_time),
    )
    if snapshot.state is JobState.QUEUED:
        message.queue.CopyFrom(
            job_pb2.QueueStatus(
                position=snapshot.position,
                queue_length=snapshot.queue_length,
                eta_seconds=snapshot.eta_seconds,
            )
        )
    if snapshot.start_time is not None:
        message.progress.CopyFrom(
            job_pb2.Progress(
                step=snapshot.step,
                total_steps=snapshot.total_steps,
                elapsed_seconds=snapshot.elapsed_seconds,
            )
        )
    if snapshot.error is not None:
        message.error_code = code_of(snapshot.error).value[0]
        message.error_message = (
            snapshot.error.message
            if isinstance(snapshot.error, errors.ServingError)
            else "internal error"
        )
    return message
