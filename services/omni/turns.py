"""Plain data the servicer hands the engine and the engine hands back: no protobuf, no torch.

Audio inside the engine is always mono float32 in [-1, 1] at ASR_RATE (16 kHz, what Whisper,
Silero VAD and Qwen2.5-Omni's audio encoder take); the servicer decodes and resamples before a
job is queued, so the device thread never parses files.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

ASR_RATE = 16000

FloatAudio = np.ndarray[Any, np.dtype[np.float32]]


class Role(enum.StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    image: Image.Image


@dataclass(frozen=True)
class AudioPart:
    samples: FloatAudio  # mono float32 at ASR_RATE

    @property
    def seconds(self) -> float:
        return len(self.samples) / ASR_RATE


Part = TextPart | ImagePart | AudioPart


@dataclass(frozen=True)
class Message:
    role: Role
    parts: tuple[Part, ...]

    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))


@dataclass(frozen=True)
class Sampling:
    """Decoding parameters, already validated and with defaults applied."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class SpeechRequest:
    enabled: bool = False
    voice: str = ""  # resolved voice id; "" = the model's default
    chunk_ms: int = 200


@dataclass(frozen=True)
class ChatJob:
    messages: tuple[Message, ...]
    sampling: Sampling
    speech: SpeechRequest = field(default_factory=SpeechRequest)


# ---- what a job streams (ctx.emit payloads) -------------------------------------------------


@dataclass(frozen=True)
class TextOut:
    text: str
    output_tokens: int


@dataclass(frozen=True)
class AudioOut:
    pcm: bytes  # PCM_S16LE mono
    sample_rate: int
    index: int

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate


@dataclass(frozen=True)
class ChatResult:
    text: str
    finish: FinishReason
    input_tokens: int
    output_tokens: int
    seed: int
    audio: bytes = b""  # all speech, PCM_S16LE mono; empty without speech
    sample_rate: int = 0
    audio_seconds: float = 0.0
