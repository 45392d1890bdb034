"""Plain typed results of unary calls (and the parts streams share): no protobuf in user code."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from PIL import Image as PILImage

from .audio import AudioClip
from .images import EncodedImage


class JobState(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class FinishReason(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"


class SessionState(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    LISTENING = "listening"
    RESPONDING = "responding"
    PAUSED = "paused"
    CLOSED = "closed"


@dataclass(frozen=True)
class Usage:
    """Tokens and timing of a finished job."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    queue_seconds: float = 0.0
    run_seconds: float = 0.0
    batch_size: int = 0


@dataclass(frozen=True)
class Job:
    """A job as GetJob/CancelJob report it."""

    job_id: str
    kind: str
    state: JobState
    position: int = 0  # 1-based place in the queue while QUEUED
    queue_length: int = 0
    queue_eta_seconds: float = 0.0
    step: int = 0
    total_steps: int = 0
    elapsed_seconds: float = 0.0
    eta_seconds: float = 0.0
    created: datetime | None = None
    started: datetime | None = None
    ended: datetime | None = None
    error_code: str = ""  # gRPC code name of a FAILED or CANCELLED job
    error_message: str = ""


@dataclass(frozen=True)
class ModelInfo:
    """What a service serves (common to every capability)."""

    family: str
    model_id: str
    revision: str
    architecture: str
    dtype: str
    device: str
    attention_implementation: str
    compiled: bool
    capabilities: tuple[str, ...]
    state: str  # "ready", "loading", "warming_up", "failed", "draining"
    load_error: str
    load_seconds: float
    max_queue_size: int
    max_batch_size: int
    server_version: str
    random_weights: bool = False  # a built-in with random weights: outputs are noise
    notice: str = ""  # what the service wants its user to know (e.g. why outputs are noise)


@dataclass(frozen=True)
class ServiceInfo:
    """GetModelInfo of any capability: the common model facts, the capability's limits and its
    other fields (e.g. vision's embedding_dimension), as plain dicts."""

    model: ModelInfo
    limits: dict[str, Any]
    extras: dict[str, Any]


@dataclass(frozen=True)
class Generation:
    """Images of a finished text-to-image or image-to-image job (also the stream's last event)."""

    job_id: str
    images: list[PILImage.Image]
    encoded: list[EncodedImage]  # the exact bytes the server sent, for writing files
    seed: int
    steps: int
    prompt_truncated: bool
    usage: Usage


@dataclass(frozen=True)
class ChatReply:
    """A finished chat answer (vl and omni); `audio` is set when omni speech was asked for."""

    job_id: str
    text: str
    finish_reason: FinishReason
    usage: Usage
    seed: int
    audio: AudioClip | None = None


@dataclass(frozen=True)
class Embeddings:
    """One row per input, float32, shape (n, dimension)."""

    job_id: str
    vectors: np.ndarray[Any, Any]
    dimension: int
    usage: Usage
    truncated: list[bool] = field(default_factory=list)  # texts cut to the model's context


@dataclass(frozen=True)
class Similarity:
    """scores[i, j]: query i against candidate j."""

    job_id: str
    scores: np.ndarray[Any, Any]
    usage: Usage


@dataclass(frozen=True)
class LabelScore:
    label: str
    index: int
    score: float


@dataclass(frozen=True)
class Classifications:
    """Labels per image, best first; `activation` is "softmax" (CLIP) or "sigmoid" (SigLIP)."""

    job_id: str
    labels: list[list[LabelScore]]
    activation: str
    usage: Usage


@dataclass(frozen=True)
class Ranked:
    index: int
    score: float


@dataclass(frozen=True)
class Ranking:
    """Candidates best first."""

    job_id: str
    results: list[Ranked]
    usage: Usage


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    pause_timeout_seconds: float
    idle_timeout_seconds: float
    output_sample_rate: int


@dataclass(frozen=True)
class PushAck:
    acked_sequence: int
    state: SessionState


@dataclass(frozen=True)
class SessionClosed:
    turns: int
    recording_path: str


@dataclass(frozen=True)
class Voice:
    voice_id: str
    name: str
    registered: bool
    sample_seconds: float
