"""Plain data the operations hand the engine and the engine hands back, beyond the shared chat
vocabulary (services.runtime.chat): audio parts, speech, and what a job streams. No protobuf, no
torch.

Audio inside the engine is always mono float32 in [-1, 1] at ASR_RATE (16 kHz, what Whisper,
Silero VAD and Qwen2.5-Omni's audio encoder take); the operations decode and resample before a
job is queued, so the device thread never parses files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.runtime.chat.messages import ChatOutput, ContentPart, Message
from services.runtime.chat.sampling import SamplingPlan

ASR_RATE = 16000

FloatAudio = np.ndarray[Any, np.dtype[np.float32]]


@dataclass(frozen=True)
class AudioPart(ContentPart):
    samples: FloatAudio  # mono float32 at ASR_RATE

    @property
    def seconds(self) -> float:
        return len(self.samples) / ASR_RATE


@dataclass(frozen=True)
class SpeechRequest:
    enabled: bool = False
    voice: str = ""  # resolved voice id; "" = the model's default
    chunk_ms: int = 200


@dataclass(frozen=True)
class ChatJob:
    messages: tuple[Message, ...]
    sampling: SamplingPlan
    speech: SpeechRequest = field(default_factory=SpeechRequest)


# ---- what a job streams (ctx.emit payloads, besides TextDelta) ------------------------------


@dataclass(frozen=True)
class AudioOut:
    pcm: bytes  # PCM_S16LE mono
    sample_rate: int
    index: int

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate


@dataclass(frozen=True)
class ChatResult(ChatOutput):
    audio: bytes = b""  # all speech, PCM_S16LE mono; empty without speech
    sample_rate: int = 0
    audio_seconds: float = 0.0
