"""OpenAI's edit masks -> the t2i service's inpainting masks.

OpenAI marks the area to edit with transparency (alpha 0) in a PNG the size of the image; the
service's InpaintImage reads a greyscale mask where white is repainted. The alpha channel is
turned into that mask here, so opaque bright pixels of an OpenAI mask are never repainted."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from gateway.openai.errors import OpenAIError, invalid

# The service refuses larger images anyway; this keeps a hostile mask from being decoded here.
MAX_MASK_PIXELS = 40_000_000


def inpainting_mask(data: bytes) -> bytes:
    """A PNG, white where `data` (an OpenAI mask) is fully transparent and black elsewhere."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.width * opened.height > MAX_MASK_PIXELS:
                raise _bad(f"{opened.width}x{opened.height} is more than {MAX_MASK_PIXELS} pixels")
            has_alpha = opened.mode in ("RGBA", "LA", "PA") or "transparency" in opened.info
            if not has_alpha:
                raise _bad("it has no alpha channel: transparent pixels mark the area to edit")
            alpha = opened.convert("RGBA").getchannel("A")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _bad(f"not a readable image ({exc})") from None
    mask = alpha.point(lambda value: 255 if value == 0 else 0)
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    return buffer.getvalue()


def _bad(reason: str) -> OpenAIError:
    return invalid(f"mask: {reason}", "mask")
