"""Small inputs for the OpenAI API tests."""

from __future__ import annotations

import base64
import io

from PIL import Image


def png(width: int = 32, height: int = 32, color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"
