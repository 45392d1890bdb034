"""The vl engine's plain-Python vocabulary: what a chat request holds and what it returns.

The servicer builds these from protobuf messages and the engine never sees protobuf. The shapes
mirror the contract (messages[i].content[j], sampling, image_resolution) so that errors the
engine finds can still name the request field.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from PIL import Image


class Role(enum.StrEnum):
    """Chat roles as chat templates spell them."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class FinishReason(enum.StrEnum):
    STOP = "stop"  # end-of-turn token or a stop sequence
    LENGTH = "length"  # max_new_tokens or the context length
    CANCELLED = "cancelled"  # client, deadline or CancelJob


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    image: Image.Image  # RGB, already decoded and checked


@dataclass(frozen=True)
class Message:
    role: Role
    content: tuple[TextPart | ImagePart, ...]


@dataclass(frozen=True)
class Sampling:
    """Decoding parameters; None means "not given" (model default, then service default)."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resolution:
    """Image processor pixel bounds for this request; 0 keeps the service default."""

    min_pixels: int = 0
    max_pixels: int = 0


@dataclass(frozen=True)
class ChatInput:
    messages: tuple[Message, ...]
    sampling: Sampling = field(default_factory=Sampling)
    resolution: Resolution = field(default_factory=Resolution)

    def images(self) -> list[tuple[str, Image.Image]]:
        """(request field path, image) in the order the model sees them."""
        return [
            (f"messages[{i}].content[{j}].image", part.image)
            for i, message in enumerate(self.messages)
            for j, part in enumerate(message.content)
            if isinstance(part, ImagePart)
        ]


@dataclass(frozen=True)
class TextDelta:
    """Streamed text: `text` never splits a character; `output_tokens` counts tokens so far."""

    text: str
    output_tokens: int


@dataclass(frozen=True)
class ChatOutput:
    text: str
    finish_reason: FinishReason
    input_tokens: int
    output_tokens: int
    seed: int


@dataclass(frozen=True)
class ChatLimits:
    """The limits a vl service enforces, as GetModelInfo reports them."""

    max_context_tokens: int
    max_new_tokens: int
    default_max_new_tokens: int
    max_messages: int
    max_images: int
    default_min_pixels: int
    default_max_pixels: int
    min_pixels: int  # smallest allowed Resolution.min_pixels
    max_pixels: int  # largest allowed Resolution.max_pixels
    resolution_supported: bool  # False: the processor has a fixed resolution
