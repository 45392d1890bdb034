"""Images in and out: PIL images, file paths, numpy arrays and raw bytes become
`mmserve.common.v1.Image` messages; images in responses become PIL images (and keep their exact
encoded bytes, so files can be written without re-encoding)."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
from PIL import Image as PILImage

from mmserve.common.v1 import media_pb2

# What the SDK accepts wherever an image goes in. A `str` is a file path, or a URI (it has
# "://") that the server fetches itself when its operator allowed the prefix.
ImageLike: TypeAlias = (
    PILImage.Image
    | np.ndarray[Any, Any]
    | bytes
    | bytearray
    | memoryview
    | str
    | os.PathLike[str]
    | media_pb2.Image
)

ImageFormat: TypeAlias = media_pb2.ImageFormat.ValueType

FORMAT_NAMES: dict[ImageFormat, str] = {
    media_pb2.IMAGE_FORMAT_PNG: "png",
    media_pb2.IMAGE_FORMAT_JPEG: "jpeg",
    media_pb2.IMAGE_FORMAT_WEBP: "webp",
}
FORMATS_BY_NAME: dict[str, ImageFormat] = {
    name: number for number, name in FORMAT_NAMES.items()
} | {"jpg": media_pb2.IMAGE_FORMAT_JPEG}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def sniff_image_format(data: bytes) -> ImageFormat:
    """The ImageFormat of encoded bytes, UNSPECIFIED when unknown (the server sniffs too)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return media_pb2.IMAGE_FORMAT_PNG
    if data.startswith(b"\xff\xd8\xff"):
        return media_pb2.IMAGE_FORMAT_JPEG
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return media_pb2.IMAGE_FORMAT_WEBP
    return media_pb2.IMAGE_FORMAT_UNSPECIFIED


def format_number(name: str) -> ImageFormat:
    """ImageFormat for "png", "jpeg"/"jpg" or "webp"."""
    try:
        return FORMATS_BY_NAME[name.lower()]
    except KeyError:
        raise ValueError(f"unknown image format {name!r}; use png, jpeg or webp") from None


def array_to_pil(array: np.ndarray[Any, Any]) -> PILImage.Image:
    """HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA); uint8, or floats in [0, 1]."""
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(f"image arrays are HxW, HxWx3 or HxWx4; got shape {array.shape}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating):
            array = np.clip(np.rint(array * 255.0), 0, 255)
        array = array.astype(np.uint8)
    return PILImage.fromarray(np.ascontiguousarray(array))


def encode_pil(image: PILImage.Image, fmt: str = "png", quality: int = 95) -> bytes:
    """Encodes a PIL image (lossless PNG by default, the safest thing to send)."""
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    if fmt.lower() in ("jpeg", "jpg") and image.mode == "RGBA":
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if fmt.lower() == "jpg" else fmt.upper(), quality=quality)
    return buffer.getvalue()


def to_image_proto(image: ImageLike) -> media_pb2.Image:
    """The request message for any accepted image input."""
    if isinstance(image, media_pb2.Image):
        return image
    if isinstance(image, PILImage.Image):
        return media_pb2.Image(data=encode_pil(image), format=media_pb2.IMAGE_FORMAT_PNG)
    if isinstance(image, np.ndarray):
        data = encode_pil(array_to_pil(image))
        return media_pb2.Image(data=data, format=media_pb2.IMAGE_FORMAT_PNG)
    if isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
        return media_pb2.Image(data=data, format=sniff_image_format(data))
    if isinstance(image, str) and "://" in image:
        return media_pb2.Image(uri=image)
    if isinstance(image, str | os.PathLike):
        data = Path(image).read_bytes()
        return media_pb2.Image(data=data, format=sniff_image_format(data))
    raise TypeError(f"cannot send {type(image).__name__} as an image")


@dataclass(frozen=True)
class EncodedImage:
    """An image exactly as the server sent it."""

    data: bytes
    format: str  # "png", "jpeg", "webp"
    width: int
    height: int

    def to_pil(self) -> PILImage.Image:
        return decode_image(self.data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Writes the bytes unchanged (no re-encoding)."""
        target = Path(path)
        target.write_bytes(self.data)
        return target

    @property
    def suffix(self) -> str:
        return ".jpg" if self.format == "jpeg" else f".{self.format or 'png'}"


def decode_image(data: bytes) -> PILImage.Image:
    image = PILImage.open(io.BytesIO(data))
    image.load()  # decode now: the buffer is gone after this call
    return image


def from_image_proto(image: media_pb2.Image) -> EncodedImage:
    fmt = FORMAT_NAMES.get(image.format) or FORMAT_NAMES.get(sniff_image_format(image.data), "")
    width, height = image.width, image.height
    if not width or not height:  # servers set them, but be robust to ones that do not
        width, height = decode_image(image.data).size
    return EncodedImage(data=image.data, format=fmt, width=width, height=height)
