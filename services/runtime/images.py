"""Safe decoding and encoding of client images.

Every image a client sends is untrusted: it may be empty, truncated, a format we do not take,
or a decompression bomb (a few KB claiming billions of pixels). `decode_image` reads the
dimensions from the header first and refuses oversize images before any pixel is decoded, then
hands models a plain RGB image: EXIF orientation applied, alpha composited on white, 16-bit
and float data scaled (not clipped) to 8 bits, the first frame of an animation.

The functions are pure and blocking; servicers run them in a thread pool. They avoid global
state (PIL's MAX_IMAGE_PIXELS, warning filters), which threads would race on.
"""

from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import (
    GifImagePlugin,  # noqa: F401 - imported to register the plugin
    Image,
    ImageOps,
    JpegImagePlugin,  # noqa: F401 - imported to register the plugin
    PngImagePlugin,  # noqa: F401 - imported to register the plugin
    WebPImagePlugin,  # noqa: F401 - imported to register the plugin
)

from services.runtime.errors import InvalidArgument

logger = logging.getLogger(__name__)

DEFAULT_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})
_FORMAT_ALIASES = {"JPG": "JPEG"}
_ORIENTATION_TAG = 0x0112
_WHITE = (255, 255, 255, 255)


# The most elongated image any capability takes (longest side over shortest). Processors that
# resize the shortest side (CLIP, DINO, Qwen's smart_resize) turn a 16384x1 image, a few bytes of
# PNG, into gigabytes of floats or an error; 200:1 keeps every real photo and panorama.
MAX_ASPECT_RATIO = 200


@dataclass(frozen=True)
class ImageLimits:
    """What a service accepts; the defaults suit models that resize to at most a few MP."""

    max_pixels: int = 40_000_000
    max_side: int = 16384
    allowed_formats: frozenset[str] = field(default=DEFAULT_FORMATS)
    max_bytes: int = 64 * 1024 * 1024
    # Longest side over shortest side; None: any. A 4096x1 PNG is 88 bytes and within the
    # pixel limits, yet a processor that resizes the shortest side to 224 (CLIP, DINO) turns it
    # into 917504x224 floats (GBs, seconds), and Qwen's smart_resize raises on it.
    max_aspect_ratio: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_side", "max_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ImageLimits.{name} must be positive")
        if self.max_aspect_ratio is not None and self.max_aspect_ratio < 1:
            raise ValueError("ImageLimits.max_aspect_ratio must be at least 1")
        formats = frozenset(normalize_format(f) for f in self.allowed_formats)
        if not formats:
            raise ValueError("ImageLimits.allowed_formats must name at least one format")
        object.__setattr__(self, "allowed_formats", formats)


def normalize_format(name: str) -> str:
    """PIL's format name for a user's spelling: "png" -> "PNG", "jpg" -> "JPEG"."""
    upper = name.strip().upper()
    return _FORMAT_ALIASES.get(upper, upper)


# ---------------------------------------------------------------------------------------------
# Sniffing and header sizes: cheap byte checks that run before PIL touches the data.


def sniff_format(data: bytes) -> str | None:
    """The image format from its magic bytes, as PIL names it, or None."""
    head = bytes(data[:16])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    if head.startswith(b"BM") and len(head) >= 14:
        return "BMP"
    return None


def header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) from the header without decoding, or None if it cannot be read cheaply.

    For WebP this matters most: PIL allocates the whole canvas while opening the file.
    """
    try:
        if fmt == "PNG":
            return _png_size(data)
        if fmt == "WEBP":
            return _webp_size(data)
        if fmt == "GIF":
            return _gif_size(data)
        if fmt == "JPEG":
            return _jpeg_size(data)
    except (struct.error, IndexError):
        return None  # too short to tell; PIL's own parser then refuses it
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended format: 24-bit canvas size minus one
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14-bit sizes minus one
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy key frame
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _gif_size(data: bytes) -> tuple[int, int]:
    # PIL grows the canvas to fit a first frame that lies outside the logical screen, so the
    # first image descriptor counts too.
    width, height = struct.unpack("<HH", data[6:10])
    flags = data[10]
    pos = 13 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0)
    while pos < len(data):
        block = data[pos]
        if block == 0x2C:  # image descriptor
            left, top, frame_w, frame_h = struct.unpack("<HHHH", data[pos + 1 : pos + 9])
            return max(width, left + frame_w), max(height, top + frame_h)
        if block != 0x21:  # trailer or junk: PIL decides
            break
        pos += 2  # extension introducer and label, then sub-blocks up to a zero length
        while pos < len(data) and data[pos]:
            pos += data[pos] + 1
        pos += 1
    return width, height


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        if marker == 0xDA:  # start of scan before any frame header: leave it to PIL
            return None
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    return None


# ---------------------------------------------------------------------------------------------
# Decoding.


def decode_image(
    data: bytes,
    *,
    field: str,
    limits: ImageLimits,
    expected_format: str | None = None,
) -> Image.Image:
    """Decode untrusted bytes into an RGB image, or raise InvalidArgument for `field`.

    `expected_format` is the format the client declared, if any; a mismatch is refused so a
    client learns its labelling is wrong instead of getting a silently different decode.
    """
    fmt = _check_bytes(data, field=field, limits=limits, expected_format=expected_format)
    size = header_size(data, fmt)
    if size is not None:
        _check_size(size, field=field, limits=limits)
    img = _open(data, fmt, field=field)
    _check_size(img.size, field=field, limits=limits)
    _load(img, fmt, field=field)
    img = _apply_orientation(img)
    try:
        return to_rgb(img)
    except ValueError as exc:
        raise InvalidArgument.for_field(field, str(exc)) from exc


def _check_bytes(
    data: bytes, *, field: str, limits: ImageLimits, expected_format: str | None
) -> str:
    if not data:
        raise InvalidArgument.for_field(field, "image data is empty")
    if len(data) > limits.max_bytes:
        raise InvalidArgument.for_field(
            field, f"image is {len(data)} bytes; the limit is {limits.max_bytes} bytes"
        )
    allowed = ", ".join(sorted(limits.allowed_formats))
    fmt = sniff_format(data)
    if fmt is None:
        raise InvalidArgument.for_field(
            field, f"data is not a recognised image; send one of {allowed}"
        )
    if fmt not in limits.allowed_formats:
        raise InvalidArgument.for_field(
            field, f"image format {fmt} is not accepted; send one of {allowed}"
        )
    if expected_format is not None and normalize_format(expected_format) != fmt:
        raise InvalidArgument.for_field(
            field, f"image data is {fmt} but its format says {normalize_format(expected_format)}"
        )
    return fmt


def _check_size(size: tuple[int, int], *, field: str, limits: ImageLimits) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidArgument.for_field(field, f"image has no pixels ({width}x{height})")
    if width > limits.max_side or height > limits.max_side:
        raise InvalidArgument.for_field(
            field,
            f"image is {width}x{height} pixels; the limit is {limits.max_side} pixels per side",
        )
    if width * height > limits.max_pixels:
        raise InvalidArgument.for_field(
            field,
            f"image is {width}x{height} = {width * height} pixels; "
            f"the limit is {limits.max_pixels} pixels",
        )
    ratio = limits.max_aspect_ratio
    if ratio is not None and max(width, height) > ratio * min(width, height):
        raise InvalidArgument.for_field(
            field,
            f"image is {width}x{height} pixels; its longer side may be at most {ratio:g} "
            "times its shorter side",
        )


def _open(data: bytes, fmt: str, *, field: str) -> Image.Image:
    # The format's own opener, not Image.open: Image.open applies PIL's process-wide
    # MAX_IMAGE_PIXELS (a warning or an error, depending on size), while our limits are
    # checked per service, before and after this call.
    if fmt not in Image.OPEN:
        Image.init()
    if fmt not in Image.OPEN:
        raise InvalidArgument.for_field(field, f"this server cannot read {fmt} images")
    factory, _accept = Image.OPEN[fmt]
    try:
        return factory(io.BytesIO(data), "")
    except MemoryError:
        raise
    except Exception as exc:  # decoders raise many types (SyntaxError, OSError, struct.error...)
        raise InvalidArgument.for_field(field, f"image is not a valid {fmt} file: {exc}") from exc


def _load(img: Image.Image, fmt: str, *, field: str) -> None:
    try:
        img.load()
    except MemoryError:
        raise
    except Exception as exc:  # truncated or corrupt pixel data, in any of the decoders
        raise InvalidArgument.for_field(
            field, f"{fmt} image is truncated or corrupt: {exc}"
        ) from exc


def _apply_orientation(img: Image.Image) -> Image.Image:
    # Phones store pixels sideways and say so in EXIF; models must see what the user saw.
    try:
        orientation = img.getexif().get(_ORIENTATION_TAG, 1)
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            return ImageOps.exif_transpose(img)
    except MemoryError:
        raise
    except Exception as exc:
        # Broken EXIF is common (editors, cameras) and the pixels are fine: keep them as stored.
        logger.debug("ignoring unreadable EXIF orientation: %s", exc)
    return img


# ---------------------------------------------------------------------------------------------
# Mode conversion.

_WIDE_INT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB, the way image processors expect it.

    ICC profiles are not applied: the models were trained on images loaded with a plain
    `convert("RGB")`, so that is what matches their inputs.
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in _WIDE_INT_MODES:
        return Image.fromarray(_wide_int_to_uint8(img)).convert("RGB")
    if mode == "F":
        return Image.fromarray(_float_to_uint8(np.asarray(img, dtype=np.float32))).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        return _composite_on_white(img)
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise ValueError(f"image colour mode {mode} is not supported") from exc


def _composite_on_white(img: Image.Image) -> Image.Image:
    # Transparent areas would otherwise become black (or the palette's hidden colour).
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE)
    return Image.alpha_composite(background, rgba).convert("RGB")


def _wide_int_to_uint8(img: Image.Image) -> np.ndarray[Any, np.dtype[np.uint8]]:
    values = np.asarray(img)
    if img.mode == "I":
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 0xFFFF:
            # 32-bit data outside the 16-bit range: stretch what is there to 0..255.
            return _stretch(values.astype(np.float32), float(low), float(high))
    # 16-bit samples to 8 bits by rounding v/257 (65535 -> 255), in integer arithmetic to keep
    # the peak memory of a large image low. Clipping instead would turn most pixels white.
    wide = values.astype(np.uint32)
    wide += 128
    wide //= 257
    return wide.astype(np.uint8)


def _float_to_uint8(values: np.ndarray[Any, np.dtype[np.float32]]) -> np.ndarray[Any, Any]:
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if low >= 0.0 and high <= 1.0:  # the usual convention for float images
        return np.rint(values * 255.0).astype(np.uint8)
    return _stretch(values, low, high)


def _stretch(values: np.ndarray[Any, Any], low: float, high: float) -> np.ndarray[Any, Any]:
    span = high - low
    if span <= 0:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / span)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Encoding.

_ENCODABLE_MODES = {
    "PNG": frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I;16"}),
    "JPEG": frozenset({"L", "RGB"}),
    "WEBP": frozenset({"RGB", "RGBA"}),
}


def encode_image(img: Image.Image, fmt: str = "PNG", quality: int = 90) -> bytes:
    """Encode `img` as PNG (lossless, byte-for-byte reproducible), JPEG or WebP.

    Metadata (EXIF, ICC, text) is dropped: it would make equal pixels encode differently and
    could carry data the client never sent.
    """
    name = normalize_format(fmt)
    if name not in _ENCODABLE_MODES:
        raise ValueError(f"cannot encode images as {fmt!r}: use PNG, JPEG or WEBP")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be 1..100, not {quality}")
    img = _encodable(img, name)
    buffer = io.BytesIO()
    if name == "PNG":
        img.save(buffer, "PNG", compress_level=6, optimize=False)
    elif name == "JPEG":
        img.save(buffer, "JPEG", quality=quality)
    else:
        img.save(buffer, "WEBP", quality=quality, method=4)
    return buffer.getvalue()


def _encodable(img: Image.Image, name: str) -> Image.Image:
    # A tRNS colour key lives in `info`, which is dropped below, so it becomes real alpha first.
    keyed = "transparency" in img.info
    if keyed or img.mode not in _ENCODABLE_MODES[name]:
        keep_alpha = name != "JPEG" and (keyed or img.mode in _ALPHA_MODES)
        img = img.convert("RGBA") if keep_alpha else to_rgb(img)
    if img.info:
        img = img.copy()
        img.info = {}
    return img
