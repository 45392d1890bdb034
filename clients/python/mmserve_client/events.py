"""Typed events of server streams. A job stream yields `Accepted` first, then `Queued` while
waiting, progress (`Progress`, `TextDelta`, `AudioChunk`), `Heartbeat` when idle, and its result
last (`Generation` for t2i, `Completed` for vl and omni)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from PIL import Image as PILImage

from .audio import AudioClip
from .results import FinishReason, Generation, JobState, SessionState, Usage


@dataclass(frozen=True)
class Accepted:
    """The job exists (always the first event); its id works with get_job/cancel_job."""

    job_id: str
    position: int
    queue_length: int
    eta_seconds: float


@dataclass(frozen=True)
class Queued:
    """The job's place in the queue changed; `eta_seconds` until it starts."""

    job_id: str
    position: int
    queue_length: int
    eta_seconds: float


@dataclass(frozen=True)
class Progress:
    """A denoising step finished; `preview` is a low-resolution image when asked for."""

    job_id: str
    step: int
    total: int
    elapsed_seconds: float
    eta_seconds: float
    preview: PILImage.Image | None = None


@dataclass(frozen=True)
class Heartbeat:
    """Nothing else happened for a while; the job is still alive."""

    job_id: str
    state: JobState
    elapsed_seconds: float


@dataclass(frozen=True)
class TextDelta:
    """New text to append; `output_tokens` generated so far."""

    job_id: str
    text: str
    output_tokens: int


@dataclass(frozen=True)
class AudioChunk:
    """New speech (int16 PCM); `index` counts chunks from 0."""

    job_id: str
    audio: AudioClip
    index: int


@dataclass(frozen=True)
class Completed:
    """A chat stream ended (last event)."""

    job_id: str
    finish_reason: FinishReason
    usage: Usage
    seed: int
    audio_seconds: float = 0.0


T2IEvent: TypeAlias = Accepted | Queued | Progress | Heartbeat | Generation
ChatEvent: TypeAlias = Accepted | Queued | TextDelta | AudioChunk | Heartbeat | Completed
JobEvent: TypeAlias = T2IEvent | ChatEvent


# --- live omni sessions: events carry the session and turn instead of a job id ---


@dataclass(frozen=True)
class SessionStateChanged:
    state: SessionState
    reason: str


@dataclass(frozen=True)
class Transcript:
    """What the user said, as the server heard it."""

    text: str
    is_final: bool


@dataclass(frozen=True)
class TurnCompleted:
    turn: int
    finish_reason: FinishReason
    usage: Usage


@dataclass(frozen=True)
class SessionEvent:
    """One event of a session's output stream: `event` is SessionStateChanged, Transcript,
    TextDelta, AudioChunk, TurnCompleted, Queued or Heartbeat (these last four with job_id "")."""

    session_id: str
    turn: int
    event: (
        SessionStateChanged
        | Transcript
        | TextDelta
        | AudioChunk
        | TurnCompleted
        | Queued
        | Heartbeat
    )
