"""What a vl chat request holds beyond the shared chat vocabulary (services.runtime.chat):
the per-request image resolution, and the limits the service enforces.

The operations build these from protobuf messages and the engine never sees protobuf. The shapes
mirror the contract (messages[i].content[j], sampling, image_resolution) so that errors the
engine finds can still name the request field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from services.runtime.chat.messages import ImagePart, Message
from services.runtime.chat.sampling import Sampling


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
class ChatLimits:
    """The limits a vl service enforces, as GetModelInfo reports them."""

    max_context_tokens: int
    max_new_tokens: int
    max_messages: int
    max_images: int
    default_min_pixels: int
    default_max_pixels: int
    min_pixels: int  # smallest allowed Resolution.min_pixels
    max_pixels: int  # largest allowed Resolution.max_pixels
    resolution_supported: bool  # False: the processor has a fixed resolution
