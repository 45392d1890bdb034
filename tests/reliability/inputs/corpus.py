"""Hostile (and merely unusual) image and audio files, built in code at test time.

Nothing binary is committed: every file is made here with PIL, soundfile, zlib and struct, then
cut, patched or inflated. Each entry says what the service must make of it:

- ACCEPT: a real image or clip, just unusual (CMYK, 16-bit, palette with alpha, animated,
  EXIF-rotated, 8 channels, NaN samples, odd rates). Decoded and used.
- REFUSE: truncated, corrupt, a decompression bomb, over a limit, not an image or not audio,
  mislabelled, a format the service does not take. INVALID_ARGUMENT naming the field.
- EITHER: a decoder may legitimately read what is there or refuse it (a JPEG with a damaged
  scan, a WAV whose header claims more data than it holds). Either is fine; anything else not.

Audio limits differ per RPC (chat parts, session chunks, reference voices), so an audio entry
may give a different expectation per use.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import soundfile
from PIL import Image

from mmserve.common.v1 import media_pb2
from tests.reliability.inputs.fleet import MAX_AUDIO_SECONDS, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE

ACCEPT, REFUSE, EITHER = "accept", "refuse", "either"

# Uses of audio with different rules (services/omni/config.py defaults, and fleet.py flags).
CHAT, SESSION, VOICE = "chat", "session", "voice"
SESSION_MAX_SECONDS = 5.0  # session_max_chunk_ms
VOICE_MIN_SECONDS, VOICE_MAX_SECONDS = 3.0, 30.0
AUDIO_USES = (CHAT, SESSION, VOICE)


@dataclass(frozen=True)
class ImageFile:
    name: str
    data: bytes
    expect: str
    format: int = media_pb2.IMAGE_FORMAT_UNSPECIFIED
    by_capability: Mapping[str, str] | None = None  # where capabilities differ

    def expect_for(self, capability: str) -> str:
        return (self.by_capability or {}).get(capability, self.expect)

    def message(self) -> media_pb2.Image:
        return media_pb2.Image(data=self.data, format=self.format)  # type: ignore[arg-type]


@dataclass(frozen=True)
class AudioFile:
    name: str
    data: bytes
    expect: Mapping[str, str]  # use -> ACCEPT/REFUSE/EITHER
    format: int = media_pb2.AUDIO_FORMAT_UNSPECIFIED
    sample_rate_hz: int = 0
    channels: int = 0

    def message(self) -> media_pb2.Audio:
        return media_pb2.Audio(
            data=self.data,
            format=self.format,  # type: ignore[arg-type]
            sample_rate_hz=self.sample_rate_hz,
            channels=self.channels,
        )


# ---------------------------------------------------------------------------------------------
# Image building blocks


def noise(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_by_hand(
    width: int, height: int, *, bit_depth: int = 8, color_type: int = 0, rows: int | None = None
) -> bytes:
    """A PNG written chunk by chunk, with `rows` rows of zero pixels compressed into IDAT
    (all of them by default). Zero rows compress about 1000:1, which is what makes bombs."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    row = b"\x00" + bytes((width * channels * bit_depth + 7) // 8)
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row) for _ in range(height if rows is None else rows)]
    parts.append(compressor.flush())
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", b"".join(parts))
        + png_chunk(b"IEND", b"")
    )


def _patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


def _jpeg_sof_offset(data: bytes) -> int:
    pos = 2
    while pos + 4 <= len(data):
        marker = data[pos + 1]
        if 0xC0 <= marker <= 0xC2:
            return pos
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    raise ValueError("no SOF marker")


def jpeg_with_size(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header claims another size."""
    data = encode(noise(16, 16, 3), "JPEG", quality=80)
    sof = _jpeg_sof_offset(data)
    return _patch(data, sof + 5, struct.pack(">HH", height, width))


def _flip(data: bytes, start: int, count: int) -> bytes:
    middle = bytes(b ^ 0x5A for b in data[start : start + count])
    return data[:start] + middle + data[start + count :]


def _exif_jpeg(orientation: int | None, broken: bool = False) -> bytes:
    image = noise(24, 16, 7)
    if broken:
        # An APP1 "Exif" segment full of garbage right after SOI.
        data = encode(image, "JPEG")
        junk = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff" + bytes(range(256)) * 2
        segment = b"\xff\xe1" + struct.pack(">H", len(junk) + 2) + junk
        return data[:2] + segment + data[2:]
    exif = Image.Exif()
    exif[0x0112] = orientation or 1
    return encode(image, "JPEG", exif=exif.tobytes())


def _ztxt_bomb() -> bytes:
    # A text chunk that inflates to 16 MB: PIL caps text chunks, the service must survive it.
    text = zlib.compress(bytes(16 * 1024 * 1024), 9)
    base = encode(noise(8, 8, 9), "PNG")
    chunk = png_chunk(b"zTXt", b"Comment\x00\x00" + text)
    return base[:33] + chunk + base[33:]


def _png16_rgb() -> bytes:
    # 48-bit RGB (PIL writes no such PNG): a gradient, so scaling to 8 bits has work to do.
    width, height = 16, 8
    ramp = np.linspace(0, 65535, width, dtype=np.uint16)
    pixel_rows = np.repeat(np.stack([ramp, ramp[::-1], ramp], axis=-1)[None], height, axis=0)
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixel_rows)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def _animated(fmt: str) -> bytes:
    frames = [noise(20, 20, i) for i in range(4)]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=40, loop=0)


def _webp_vp8x_bomb() -> bytes:
    # Extended WebP whose canvas claims 16384 x 16384 (PIL would allocate it while opening).
    data = _animated("WEBP")
    assert data[12:16] == b"VP8X"
    side = (16384 - 1).to_bytes(3, "little")
    return _patch(data, 24, side + side)


def _webp_vp8l_bomb() -> bytes:
    data = encode(noise(8, 8, 4), "WEBP", lossless=True)
    assert data[12:16] == b"VP8L"
    assert data[20] == 0x2F
    bits = int.from_bytes(data[21:25], "little")
    bits = (bits & ~((1 << 28) - 1)) | (16383 << 14) | 16383  # 16384 x 16384
    return _patch(data, 21, bits.to_bytes(4, "little"))


_T2I_OK = {"t2i": ACCEPT}


@functools.cache
def image_corpus() -> tuple[ImageFile, ...]:
    png = encode(noise(32, 24, 1), "PNG")
    jpeg = encode(noise(32, 24, 2), "JPEG", quality=85)
    webp = encode(noise(32, 24, 3), "WEBP", quality=80)
    over_side = MAX_IMAGE_SIDE + 4
    over_pixels = int(MAX_IMAGE_PIXELS**0.5) + 8
    files = [
        # --- not images, or nothing in them
        ImageFile("empty", b"", REFUSE),
        ImageFile("text", b"hello, this is not an image\n" * 4, REFUSE),
        ImageFile("pdf", b"%PDF-1.7\n1 0 obj<<>>endobj\n%%EOF", REFUSE),
        ImageFile("zip", b"PK\x03\x04" + bytes(60), REFUSE),
        ImageFile("invalid_utf8", b"\xff\xfe\xfd\xc0\xaf\xed\xa0\x80", REFUSE),
        ImageFile("random", np.random.default_rng(5).bytes(4096), REFUSE),
        # --- truncated and corrupt
        ImageFile("png_signature_only", PNG_SIGNATURE, REFUSE),
        ImageFile("png_header_only", png[:33], REFUSE),
        ImageFile("png_truncated", png[: len(png) // 2], REFUSE),
        ImageFile("png_corrupt_idat", _flip(png, 45, 40), REFUSE),
        ImageFile("png_bad_ihdr_crc", _patch(png, 29, b"\x00\x00\x00\x00"), EITHER),
        ImageFile("png_zero_width", png_by_hand(0, 16), REFUSE),
        ImageFile("jpeg_soi_only", b"\xff\xd8\xff", REFUSE),
        ImageFile("jpeg_truncated", jpeg[: len(jpeg) // 2], REFUSE),
        ImageFile("jpeg_corrupt_scan", _flip(jpeg, len(jpeg) // 2, 64), EITHER),
        ImageFile("jpeg_zero_height", jpeg_with_size(16, 0), REFUSE),
        ImageFile("webp_riff_only", b"RIFF\x04\x00\x00\x00WEBP", REFUSE),
        ImageFile("webp_truncated", webp[: len(webp) // 2], REFUSE),
        ImageFile("webp_corrupt", _flip(webp, 30, 20), EITHER),
        # --- decompression bombs and huge dimensions
        ImageFile("png_bomb_header_100k", png_by_hand(100_000, 100_000, rows=1), REFUSE),
        ImageFile("png_bomb_2g_side", png_by_hand(2**31 - 1, 1, rows=0), REFUSE),
        ImageFile("png_bomb_pixels", png_by_hand(over_pixels, over_pixels), REFUSE),
        ImageFile("png_over_side", png_by_hand(over_side, 1), REFUSE),
        ImageFile("png_ztxt_bomb", _ztxt_bomb(), EITHER),
        ImageFile("jpeg_bomb_65k", jpeg_with_size(65000, 65000), REFUSE),
        ImageFile("webp_vp8x_bomb", _webp_vp8x_bomb(), REFUSE),
        ImageFile("webp_vp8l_bomb", _webp_vp8l_bomb(), REFUSE),
        # --- formats the services do not take, and wrong labels
        ImageFile("gif", encode(noise(16, 16, 6), "GIF"), REFUSE),
        ImageFile("gif_animated", _animated("GIF"), REFUSE),
        ImageFile("tiff", encode(noise(16, 16, 6), "TIFF"), REFUSE),
        ImageFile("bmp", encode(noise(16, 16, 6), "BMP"), REFUSE),
        ImageFile("png_labelled_jpeg", png, REFUSE, media_pb2.IMAGE_FORMAT_JPEG),
        ImageFile("jpeg_labelled_webp", jpeg, REFUSE, media_pb2.IMAGE_FORMAT_WEBP),
        # --- unusual but valid: decoded to plain RGB
        ImageFile("png_plain", png, ACCEPT, media_pb2.IMAGE_FORMAT_PNG),
        ImageFile("jpeg_plain", jpeg, ACCEPT),
        ImageFile("webp_plain", webp, ACCEPT),
        ImageFile("webp_animated", _animated("WEBP"), ACCEPT),
        ImageFile("png_animated_apng", _animated("PNG"), ACCEPT),
        ImageFile("jpeg_cmyk", encode(noise(24, 24, 8, "CMYK"), "JPEG"), ACCEPT),
        ImageFile("jpeg_progressive", encode(noise(24, 24, 8), "JPEG", progressive=True), ACCEPT),
        ImageFile("jpeg_grayscale", encode(noise(24, 24, 8, "L"), "JPEG"), ACCEPT),
        ImageFile("jpeg_exif_rotated", _exif_jpeg(6), ACCEPT),
        ImageFile("jpeg_exif_broken", _exif_jpeg(None, broken=True), EITHER),
        ImageFile("png_16bit_gray", encode(noise(16, 16, 9, "I;16"), "PNG"), ACCEPT),
        ImageFile("png_16bit_rgb", _png16_rgb(), ACCEPT),
        ImageFile(
            "png_palette_alpha", encode(noise(16, 16, 10, "P"), "PNG", transparency=0), ACCEPT
        ),
        ImageFile("png_gray_alpha", encode(noise(16, 16, 11, "LA"), "PNG"), ACCEPT),
        ImageFile("png_rgba", encode(noise(16, 16, 12, "RGBA"), "PNG"), ACCEPT),
        ImageFile("png_1bit", encode(noise(16, 16, 13, "1"), "PNG"), ACCEPT),
        ImageFile(
            "webp_rgba_lossless", encode(noise(16, 16, 14, "RGBA"), "WEBP", lossless=True), ACCEPT
        ),
        # --- tiny and extreme shapes (within the limits): models must cope or refuse cleanly
        ImageFile("png_1x1", encode(noise(1, 1, 15), "PNG"), ACCEPT),
        # Past 200:1 the model processors blow up (CLIP/DINO: memory; Qwen: an exception), so
        # vision, vl and omni refuse; t2i fits any input to its output size.
        ImageFile("png_wide_4096x1", png_by_hand(MAX_IMAGE_SIDE, 1), REFUSE, by_capability=_T2I_OK),
        ImageFile("png_tall_1x4096", png_by_hand(1, MAX_IMAGE_SIDE), REFUSE, by_capability=_T2I_OK),
        ImageFile("png_wide_200_to_1", png_by_hand(2000, 10), ACCEPT),
    ]
    return tuple(files)


# ---------------------------------------------------------------------------------------------
# Audio building blocks


def tone(seconds: float, rate: int, channels: int = 1, amplitude: float = 0.01) -> np.ndarray:
    """Faint noise: not speech, so VAD stays calm and Whisper answers "" in one pass. (A pure
    sine makes Whisper hallucinate and retry at every temperature: ~20 s of device time for
    3.5 s of audio, a known issue of services/omni/asr.py.)"""
    rng = np.random.default_rng(int(seconds * 1000) + rate + channels)
    samples = (amplitude * rng.standard_normal((int(seconds * rate), channels))).astype(np.float32)
    return samples if channels > 1 else samples[:, 0]


def sine(seconds: float, rate: int, amplitude: float = 0.1) -> np.ndarray:
    t = np.arange(int(seconds * rate), dtype=np.float64) / rate
    return (amplitude * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


def sound_file(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def wav_header(rate: int, channels: int, bits: int, data_bytes: int, fmt_tag: int = 1) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block, block, bits)
    riff_size = min(0xFFFFFFFF, 4 + 8 + len(fmt) + 8 + data_bytes)
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def _flac_claiming(total_samples: int) -> bytes:
    # STREAMINFO's 36-bit total sample count is what the header-only duration check reads.
    data = bytearray(sound_file(tone(0.5, 16000), 16000, "FLAC"))
    assert data[:4] == b"fLaC"
    assert data[4] & 0x7F == 0  # the first metadata block is STREAMINFO
    info = 8  # "fLaC" + block header
    packed = int.from_bytes(data[info + 10 : info + 18], "big")
    packed = (packed & ~((1 << 36) - 1)) | (total_samples & ((1 << 36) - 1))
    data[info + 10 : info + 18] = packed.to_bytes(8, "big")
    return bytes(data)


def _same(expect: str) -> dict[str, str]:
    return dict.fromkeys(AUDIO_USES, expect)


def _by_length(seconds: float, formats: tuple[str, ...] = ("WAV",)) -> dict[str, str]:
    """What each use makes of a valid clip this long in a container of `formats`."""
    chat = ACCEPT if seconds <= MAX_AUDIO_SECONDS else REFUSE
    session = ACCEPT if seconds <= SESSION_MAX_SECONDS and "WAV" in formats else REFUSE
    voice_ok = VOICE_MIN_SECONDS <= seconds <= VOICE_MAX_SECONDS
    voice = ACCEPT if voice_ok and {"WAV", "FLAC"} & set(formats) else REFUSE
    return {CHAT: chat, SESSION: session, VOICE: voice}


@functools.cache
def audio_corpus() -> tuple[AudioFile, ...]:
    ok = 3.5  # long enough for a reference voice, short enough for a session chunk
    wav = sound_file(tone(ok, 16000), 16000, "WAV", "PCM_16")
    flac = sound_file(tone(ok, 16000), 16000, "FLAC")
    nan_float = tone(ok, 16000).copy()
    nan_float[::100] = np.nan
    nan_float[1::100] = np.inf
    long_rate = 8000
    far_too_long = sound_file(tone(40.0, long_rate), long_rate, "WAV", "PCM_U8")
    pcm = (tone(1.0, 16000) * 32767).astype("<i2").tobytes()
    pcm_fmt = media_pb2.AUDIO_FORMAT_PCM_S16LE
    files = [
        # --- valid, unusual
        AudioFile("wav_plain", wav, _by_length(ok)),
        AudioFile("wav_declared", wav, _by_length(ok), media_pb2.AUDIO_FORMAT_WAV),
        AudioFile("flac_plain", flac, _by_length(ok, ("FLAC",))),
        AudioFile(
            "wav_float_nan_inf", sound_file(nan_float, 16000, "WAV", "FLOAT"), _by_length(ok)
        ),
        AudioFile(
            "wav_8_channels", sound_file(tone(ok, 8000, 8), 8000, "WAV", "PCM_16"), _by_length(ok)
        ),
        AudioFile(
            "wav_24bit_44k", sound_file(tone(ok, 44100), 44100, "WAV", "PCM_24"), _by_length(ok)
        ),
        AudioFile("wav_8k", sound_file(tone(ok, 8000), 8000, "WAV", "PCM_U8"), _by_length(ok)),
        AudioFile(
            "wav_192k_short",
            sound_file(tone(0.5, 192000), 192000, "WAV", "PCM_16"),
            _by_length(0.5),
        ),
        AudioFile(
            "pcm_s16le_16k",
            pcm,
            {CHAT: ACCEPT, SESSION: ACCEPT, VOICE: REFUSE},
            pcm_fmt,
            16000,
            1,
        ),
        # --- too long: by the header alone, and for real
        AudioFile("wav_far_too_long_actual", far_too_long, _same(REFUSE)),
        AudioFile("flac_declares_hours", _flac_claiming(16000 * 3600 * 10), _same(REFUSE)),
        AudioFile(
            "wav_declares_4gb_holds_little",
            wav_header(16000, 1, 16, 0xFFFFFF00) + bytes(3200),
            {CHAT: EITHER, SESSION: EITHER, VOICE: REFUSE},
        ),
        # --- wrong sample rates
        AudioFile(
            "wav_rate_1000", sound_file(tone(ok, 1000), 1000, "WAV", "PCM_16"), _same(REFUSE)
        ),
        AudioFile(
            "wav_rate_384k",
            wav_header(384000, 1, 16, 384000 * 2) + bytes(384000 * 2),
            _same(REFUSE),
        ),
        AudioFile("wav_rate_0", wav_header(0, 1, 16, 3200) + bytes(3200), _same(REFUSE)),
        AudioFile("pcm_rate_1000", pcm[:4000], _same(REFUSE), pcm_fmt, 1000, 1),
        AudioFile(
            "pcm_rate_missing",  # a session's PCM takes the session's input_sample_rate_hz
            pcm,
            {CHAT: REFUSE, SESSION: ACCEPT, VOICE: REFUSE},
            pcm_fmt,
            0,
            1,
        ),
        AudioFile("pcm_three_channels", pcm[:6000], _same(REFUSE), pcm_fmt, 16000, 3),
        AudioFile("pcm_odd_bytes", pcm[:3], _same(REFUSE), pcm_fmt, 16000, 1),
        # --- malformed containers and non-audio
        AudioFile("empty", b"", _same(REFUSE)),
        AudioFile("text", b"this is not audio at all\n" * 8, _same(REFUSE)),
        AudioFile("png_bytes", encode(noise(8, 8), "PNG"), _same(REFUSE)),
        AudioFile("invalid_utf8", b"\xff\xfe\xfd\xc0\xaf\xed\xa0\x80", _same(REFUSE)),
        AudioFile("wav_header_only", wav[:20], _same(REFUSE)),
        AudioFile("wav_riff_no_chunks", b"RIFF\x04\x00\x00\x00WAVE", _same(REFUSE)),
        AudioFile("wav_zero_channels", wav_header(16000, 0, 16, 3200) + bytes(3200), _same(REFUSE)),
        AudioFile(
            "wav_bits_7",  # libsndfile reads it as 8-bit
            wav_header(16000, 1, 7, 3200) + bytes(3200),
            {CHAT: EITHER, SESSION: EITHER, VOICE: REFUSE},
        ),
        AudioFile(
            "wav_unknown_codec",
            wav_header(16000, 1, 16, 3200, fmt_tag=0x1234) + bytes(3200),
            _same(REFUSE),
        ),
        AudioFile(
            "wav_truncated", wav[: len(wav) // 2], {CHAT: EITHER, SESSION: EITHER, VOICE: REFUSE}
        ),
        AudioFile(
            "flac_truncated", flac[: len(flac) // 3], {CHAT: EITHER, SESSION: REFUSE, VOICE: REFUSE}
        ),
        AudioFile(
            "flac_corrupt", _flip(flac, 100, 200), {CHAT: EITHER, SESSION: REFUSE, VOICE: EITHER}
        ),
        AudioFile("ogg_garbage", b"OggS" + bytes(range(256)) * 4, _same(REFUSE)),
        AudioFile(
            "mp3_garbage", b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 4, _same(REFUSE)
        ),
        AudioFile("wav_labelled_flac", wav, _same(REFUSE), media_pb2.AUDIO_FORMAT_FLAC),
        AudioFile("flac_labelled_wav", flac, _same(REFUSE), media_pb2.AUDIO_FORMAT_WAV),
        AudioFile("wav_unknown_format_enum", wav, _same(REFUSE), 77),
    ]
    return tuple(files)


# ---------------------------------------------------------------------------------------------
# Small valid media for fuzz pools and normal requests


@functools.cache
def valid_images() -> tuple[media_pb2.Image, ...]:
    return (
        media_pb2.Image(data=encode(noise(32, 32, 21), "PNG"), format=media_pb2.IMAGE_FORMAT_PNG),
        media_pb2.Image(data=encode(noise(40, 24, 22), "JPEG")),
        media_pb2.Image(data=encode(noise(24, 40, 23), "WEBP")),
    )


@functools.cache
def valid_audio() -> tuple[media_pb2.Audio, ...]:
    return (
        media_pb2.Audio(data=sound_file(tone(0.5, 16000), 16000, "WAV", "PCM_16")),
        media_pb2.Audio(
            data=(tone(0.3, 16000) * 32767).astype("<i2").tobytes(),
            format=media_pb2.AUDIO_FORMAT_PCM_S16LE,
            sample_rate_hz=16000,
            channels=1,
        ),
    )
