"""services.runtime.images: hostile inputs are refused cleanly, odd modes become proper RGB."""

from __future__ import annotations

import contextlib
import io
import struct
import time
import warnings
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile, WebPImagePlugin

from services.runtime.errors import InvalidArgument
from services.runtime.images import (
    ImageLimits,
    decode_image,
    encode_image,
    header_size,
    sniff_format,
    to_rgb,
)

LIMITS = ImageLimits()
WITH_GIF = ImageLimits(allowed_formats=frozenset({"PNG", "JPEG", "WEBP", "GIF"}))
RED = (255, 0, 0)
BLUE = (0, 0, 255)


def _save(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def _noise(size: tuple[int, int] = (64, 64)) -> Image.Image:
    # Noise does not compress, so a truncation always cuts into pixel data.
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _close(pixel: Any, expected: tuple[int, int, int], tolerance: int = 15) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


def _refused(data: bytes, limits: ImageLimits = LIMITS, **kwargs: Any) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        decode_image(data, field="image.data", limits=limits, **kwargs)
    error = info.value
    assert error.violations[0].field == "image.data"
    return error


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _patch_png_size(data: bytes, width: int, height: int) -> bytes:
    # IHDR is the first chunk; rewrite its size and CRC so the header is fully valid.
    body = struct.pack(">II", width, height) + data[24:29]
    return data[:8] + _png_chunk(b"IHDR", body) + data[33:]


@pytest.fixture
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything decodes pixels: a bomb must be refused from its header."""

    def forbidden(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", forbidden)


# --- well-formed inputs ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_decodes_each_allowed_format_to_rgb(fmt: str) -> None:
    data = _save(Image.new("RGB", (32, 16), RED), fmt)
    img = decode_image(data, field="image.data", limits=LIMITS)
    assert img.mode == "RGB"
    assert img.size == (32, 16)
    assert _close(img.getpixel((5, 5)), RED)


def test_png_round_trip_is_lossless() -> None:
    original = _noise((40, 30))
    img = decode_image(encode_image(original), field="x", limits=LIMITS)
    assert np.array_equal(np.asarray(img), np.asarray(original))


# --- hostile or malformed bytes ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_truncated_image_is_refused(fmt: str) -> None:
    data = _save(_noise(), fmt)
    error = _refused(data[: len(data) // 2])
    assert fmt in error.message


def test_empty_bytes_are_refused() -> None:
    assert "empty" in _refused(b"").message


def test_random_bytes_are_refused() -> None:
    data = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert "not a recognised image" in _refused(data).message


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 100,
        b"\x89PNG\r\n\x1a\n",
        b"\xff\xd8\xff\xe0garbage" * 5,
        b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 20,
    ],
    ids=["png-garbage", "png-signature-only", "jpeg-garbage", "webp-garbage"],
)
def test_right_magic_wrong_body_is_refused(data: bytes) -> None:
    _refused(data)


def test_format_not_allowed_is_refused() -> None:
    gif = _save(Image.new("P", (4, 4)), "GIF")
    error = _refused(gif)
    assert "GIF" in error.message
    assert "JPEG, PNG, WEBP" in error.message


def test_declared_format_must_match() -> None:
    png = _save(Image.new("RGB", (4, 4)), "PNG")
    assert "JPEG" in _refused(png, expected_format="JPEG").message
    assert decode_image(png, field="f", limits=LIMITS, expected_format="png").size == (4, 4)


def test_byte_limit() -> None:
    png = _save(_noise((32, 32)), "PNG")
    assert "bytes" in _refused(png, ImageLimits(max_bytes=len(png) - 1)).message


def test_side_and_pixel_limits() -> None:
    png = _save(Image.new("RGB", (20, 5)), "PNG")
    assert "per side" in _refused(png, ImageLimits(max_side=10)).message
    assert "99 pixels" in _refused(png, ImageLimits(max_pixels=99)).message
    assert decode_image(png, field="f", limits=ImageLimits(max_pixels=100)).size == (20, 5)


@pytest.mark.usefixtures("no_pixel_decoding")
def test_png_bomb_with_patched_header_is_refused_without_decoding() -> None:
    bomb = _patch_png_size(_save(Image.new("L", (8, 8)), "PNG"), 100_000, 100_000)
    assert header_size(bomb, "PNG") == (100_000, 100_000)
    assert "100000x100000" in _refused(bomb).message


def test_genuine_png_bomb_is_refused_cheaply(no_pixel_decoding: None) -> None:
    # A real, valid 6400x6400 image (41 M pixels, one over the default limit) of ~40 KB.
    width = height = 6400
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )
    assert len(bomb) < 100_000
    started = time.perf_counter()
    assert "pixels" in _refused(bomb).message
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("lossless", [True, False], ids=["vp8l", "vp8"])
def test_webp_bomb_is_refused_before_pil_opens_it(
    monkeypatch: pytest.MonkeyPatch, lossless: bool
) -> None:
    data = bytearray(_save(Image.new("RGB", (16, 16)), "WEBP", lossless=lossless))
    if lossless:
        assert data[12:16] == b"VP8L"
        data[21:25] = (16382 | (16382 << 14)).to_bytes(4, "little")
    else:
        assert data[12:16] == b"VP8 "
        data[26:30] = struct.pack("<HH", 16383, 16383)
    assert header_size(bytes(data), "WEBP") in {(16383, 16383)}

    def forbidden(self: Any) -> None:
        raise AssertionError("PIL opened (and would allocate) the WebP canvas")

    monkeypatch.setattr(WebPImagePlugin.WebPImageFile, "_open", forbidden)
    assert "pixels" in _refused(bytes(data)).message


def test_gif_frame_outside_logical_screen_counts() -> None:
    data = bytearray(_save(Image.new("P", (12, 12)), "GIF"))
    data[6:10] = struct.pack("<HH", 1, 1)  # the screen claims 1x1; the frame is 12x12
    assert header_size(bytes(data), "GIF") == (12, 12)
    limits = ImageLimits(max_side=8, allowed_formats=frozenset({"GIF"}))
    assert "per side" in _refused(bytes(data), limits).message


def test_pil_global_pixel_limit_never_leaks(monkeypatch: pytest.MonkeyPatch) -> None:
    # With PIL's process-wide limit tiny, Image.open would warn (40x40) or raise (50x50).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    samples = [_save(Image.new("RGB", (40, 40)), "PNG"), _save(Image.new("RGB", (50, 50)), "PNG")]
    samples += [_save(Image.new("RGB", (50, 50)), fmt) for fmt in ("JPEG", "WEBP")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for data in samples:
            # A clean refusal is fine; a DecompressionBomb* warning or error escaping is not.
            with contextlib.suppress(InvalidArgument):
                assert decode_image(data, field="f", limits=LIMITS).mode == "RGB"


# --- colour modes, orientation, animation ------------------------------------------------------


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    assert _close(decode_image(data, field="f", limits=LIMITS).getpixel((8, 8)), RED)


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257 * 100, 32896, 65535]], dtype=np.uint16)
    data = _save(Image.fromarray(values), "PNG")
    img = decode_image(data, field="f", limits=LIMITS)
    assert [img.getpixel((x, 0))[0] for x in range(4)] == [0, 100, 128, 255]


def test_palette_transparency_is_composited_on_white() -> None:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putpixel((1, 1), 1)
    data = _save(img, "PNG", transparency=0)
    rgb = decode_image(data, field="f", limits=LIMITS)
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.getpixel((1, 1)) == RED


def test_rgba_and_la_are_composited_on_white() -> None:
    rgba = _save(Image.new("RGBA", (4, 4), (255, 0, 0, 128)), "PNG")
    pixel = decode_image(rgba, field="f", limits=LIMITS).getpixel((0, 0))
    assert _close(pixel, (255, 127, 127), 2)
    la = _save(Image.new("LA", (4, 4), (0, 0)), "PNG")
    assert decode_image(la, field="f", limits=LIMITS).getpixel((0, 0)) == (255, 255, 255)


def test_grey_becomes_rgb() -> None:
    data = _save(Image.new("L", (4, 4), 77), "PNG")
    assert decode_image(data, field="f", limits=LIMITS).getpixel((0, 0)) == (77, 77, 77)


def test_wide_and_float_modes_are_scaled() -> None:
    as_int = Image.fromarray(np.array([[0, 257 * 10, 65535]], dtype=np.int32))
    assert as_int.mode == "I"
    assert [to_rgb(as_int).getpixel((x, 0))[0] for x in range(3)] == [0, 10, 255]
    out_of_range = Image.fromarray(np.array([[-100, 0, 100]], dtype=np.int32))
    assert [to_rgb(out_of_range).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert [to_rgb(unit).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    wide = Image.fromarray(np.array([[np.nan, 10.0, 20.0]], dtype=np.float32))
    assert [to_rgb(wide).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_exif_orientation_is_applied() -> None:
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 20, 20))  # left half red, as the sensor stored it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = _save(stored, "JPEG", exif=exif.tobytes(), quality=95)
    img = decode_image(data, field="f", limits=LIMITS)
    assert img.size == (20, 40)
    assert _close(img.getpixel((10, 5)), RED, 60)  # the stored left edge is now on top
    assert _close(img.getpixel((10, 35)), BLUE, 60)


def _two_frames(fmt: str, **params: Any) -> bytes:
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, **params)


@pytest.mark.parametrize(("fmt", "limits"), [("GIF", WITH_GIF), ("WEBP", LIMITS), ("PNG", LIMITS)])
def test_animation_gives_first_frame(fmt: str, limits: ImageLimits) -> None:
    params = {"lossless": True} if fmt == "WEBP" else {}
    img = decode_image(_two_frames(fmt, **params), field="f", limits=limits)
    assert img.mode == "RGB"
    assert _close(img.getpixel((4, 4)), RED)


# --- encoding and sniffing ---------------------------------------------------------------------


def test_png_encoding_is_deterministic_and_drops_metadata() -> None:
    plain = _noise((24, 24))
    tagged = plain.copy()
    tagged.info = {"icc_profile": b"not really a profile", "dpi": (300, 300)}
    assert encode_image(plain) == encode_image(plain.copy()) == encode_image(tagged)


def test_lossy_encodings_honour_quality() -> None:
    img = _noise((64, 64))
    for fmt in ("JPEG", "WEBP"):
        low, high = encode_image(img, fmt, quality=10), encode_image(img, fmt, quality=95)
        assert len(low) < len(high)
        assert sniff_format(high) == fmt
        assert decode_image(high, field="f", limits=LIMITS).size == (64, 64)


def test_encoding_converts_modes_the_format_lacks() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    jpeg = decode_image(encode_image(rgba, "jpg"), field="f", limits=LIMITS)
    assert jpeg.getpixel((1, 1))[1] > 240  # transparent -> white, not black
    keyed = Image.new("P", (4, 4), 0)
    keyed.info["transparency"] = 0
    reopened = Image.open(io.BytesIO(encode_image(keyed, "PNG")))
    assert reopened.mode == "RGBA"
    assert reopened.getpixel((0, 0))[3] == 0


def test_encoding_rejects_bad_arguments() -> None:
    img = Image.new("RGB", (2, 2))
    with pytest.raises(ValueError, match="GIF"):
        encode_image(img, "GIF")
    with pytest.raises(ValueError, match="quality"):
        encode_image(img, "JPEG", quality=0)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "PNG"),
        (b"\xff\xd8\xff\xdb", "JPEG"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8L", "WEBP"),
        (b"GIF89a\x01\x00", "GIF"),
        (b"II*\x00\x08\x00\x00\x00", "TIFF"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),
        (b"", None),
        (b"hello", None),
    ],
)
def test_sniff_format(data: bytes, expected: str | None) -> None:
    assert sniff_format(data) == expected


def test_limits_normalize_and_validate() -> None:
    assert ImageLimits(allowed_formats=frozenset({"jpg", "png"})).allowed_formats == {"JPEG", "PNG"}
    with pytest.raises(ValueError, match="max_side"):
        ImageLimits(max_side=0)
    with pytest.raises(ValueError, match="at least one"):
        ImageLimits(allowed_formats=frozenset())
