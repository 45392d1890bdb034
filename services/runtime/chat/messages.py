"""What a chat request holds and what a chat job gives back, as plain Python.

Capabilities add their own parts (omni's audio) by subclassing ContentPart; the rest is the
same for every chat service, so engines and servicers of different capabilities speak one
vocabulary.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from PIL import Image


class Role(enum.StrEnum):
    """Chat roles as chat templates spell them."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class FinishReason(enum.StrEnum):
    STOP = "stop"  # end-of-turn token or a stop sequence
    LENGTH = "length"  # max_new_tokens or the context length
    CANCELLED = "cancelled"  # client, deadline, CancelJob or barge-in


class ContentPart:
    """One ordered piece of a message; the concrete parts below (and a capability's own)."""


@dataclass(frozen=True)
class TextPart(ContentPart):
    text: str


@dataclass(frozen=True)
class ImagePart(ContentPart):
    image: Image.Image  # RGB, already decoded and checked


@dataclass(frozen=True)
class Message:
    role: Role
    content: tuple[ContentPart, ...]

    def text(self) -> str:
        """The text parts joined, the other parts left out."""
        return "".join(part.text for part in self.content if isinstance(part, TextPart))


@dataclass(frozen=True)
class TextDelta:
    """Streamed text: `text` never splits a character; `output_tokens` counts tokens so far."""

    text: str
    output_tokens: int


@dataclass(frozen=True)
class PromptTokens:
    """Streamed once by engines that tokenize on the device thread, so that a stream cut short
    by a cancel can still report the tokens its prompt took."""

    input_tokens: int


@dataclass(frozen=True)
class ChatOutput:
    """What a chat job returns; capabilities extend it with what else they produce."""

    text: str
    finish_reason: FinishReason
    input_tokens: int
    output_tokens: int
    seed: int
