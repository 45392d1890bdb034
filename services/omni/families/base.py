"""The one interface every omni model family implements, whatever its internals: text from a
conversation, optionally native speech, with streaming hooks. The engine adds what a family
lacks (ASR for audio input, TTS for speech out) around it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from services.omni.generation import GenerationHooks
from services.omni.turns import FloatAudio
from services.runtime.chat.messages import FinishReason, Message
from services.runtime.chat.sampling import ModelDefaults, SamplingPlan


@dataclass(frozen=True)
class FamilyTraits:
    """What a loaded family can do natively."""

    family: str  # "qwen2_5_omni", "llama", "minicpmo", ...
    architecture: str  # class name loaded
    audio_input: bool = False
    image_input: bool = False
    speech_output: bool = False
    speech_sample_rate: int = 0
    speakers: tuple[str, ...] = ()
    voice_cloning: bool = False
    max_context_tokens: int = 0
    # generation_config.json values that fill unset request fields
    sampling_defaults: ModelDefaults = field(default_factory=ModelDefaults)


@dataclass
class Generated:
    text: str
    finish: FinishReason
    input_tokens: int
    output_tokens: int
    waveform: FloatAudio | None = None  # native speech at traits.speech_sample_rate
    # The speech already went out through GenerationHooks.on_audio as it was made (waveform
    # is then None).
    streamed: bool = False


@dataclass
class ConversationState:
    """What a live session keeps between turns so a family can reuse work (the KV cache of the
    tokens it has already seen). Families that cannot reuse it ignore it."""

    ids: list[int] = field(default_factory=list)
    cache: Any = None


@dataclass(frozen=True)
class SpeechTarget:
    """Native speech wanted: a built-in speaker, or a registered voice's sample (cloning)."""

    speaker: str = ""
    reference: FloatAudio | None = None  # 16 kHz mono sample of a registered voice
    reference_text: str = ""


class Family(ABC):
    """A loaded model family. Every method runs on the executor's device thread."""

    traits: FamilyTraits

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def generate(
        self,
        messages: tuple[Message, ...],
        sampling: SamplingPlan,
        hooks: GenerationHooks,
        *,
        speech: SpeechTarget | None = None,
        state: ConversationState | None = None,
    ) -> Generated:
        """Generates the reply to `messages` (audio parts only if traits.audio_input, image
        parts only if traits.image_input); native speech only when `speech` is given."""

    def memory_bytes(self) -> int | None:
        return None
