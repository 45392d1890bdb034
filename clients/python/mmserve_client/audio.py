"""Audio in and out: numpy samples with a sample rate (`AudioClip`), WAV/FLAC/OGG/MP3 files and
raw bytes become `mmserve.common.v1.Audio` messages; audio in responses (WAV or PCM S16LE)
becomes int16 numpy arrays. WAV is read and written here (no extra dependency); other encoded
formats are decoded with `soundfile` when it is installed."""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from mmserve.common.v1 import media_pb2


@dataclass(frozen=True)
class AudioClip:
    """PCM samples: int16, shape (frames,) for mono or (frames, channels)."""

    samples: np.ndarray[Any, Any]
    sample_rate: int

    @classmethod
    def from_array(cls, samples: np.ndarray[Any, Any], sample_rate: int) -> AudioClip:
        """Any numeric array; floats are taken as [-1, 1] and scaled to int16."""
        array = np.asarray(samples)
        if array.ndim not in (1, 2):
            raise ValueError(f"audio arrays are (frames,) or (frames, channels); got {array.shape}")
        if np.issubdtype(array.dtype, np.floating):
            array = np.clip(np.rint(array * 32767.0), -32768, 32767)
        return cls(array.astype(np.int16), int(sample_rate))

    @property
    def channels(self) -> int:
        return 1 if self.samples.ndim == 1 else int(self.samples.shape[1])

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate if self.sample_rate else 0.0

    def pcm_bytes(self) -> bytes:
        return self.samples.astype("<i2").tobytes()

    def to_wav(self) -> bytes:
        """16-bit PCM WAV."""
        data = self.pcm_bytes()
        block = 2 * self.channels
        header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
        fmt = struct.pack(
            "<HHIIHH", 1, self.channels, self.sample_rate, self.sample_rate * block, block, 16
        )
        return header + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + _u32(len(data)) + data

    def save(self, path: str | os.PathLike[str]) -> Path:
        target = Path(path)
        target.write_bytes(self.to_wav())
        return target

    @staticmethod
    def concatenate(clips: list[AudioClip]) -> AudioClip:
        """Joins streamed chunks (same rate and channels) into one clip."""
        if not clips:
            return AudioClip(np.zeros(0, dtype=np.int16), 0)
        return AudioClip(np.concatenate([c.samples for c in clips]), clips[0].sample_rate)


# What the SDK accepts wherever audio goes in: a clip, (samples, sample_rate), encoded bytes, a
# file path, or a URI (with "://") the server may fetch when its operator allowed the prefix.
AudioLike: TypeAlias = (
    AudioClip
    | tuple[np.ndarray[Any, Any], int]
    | bytes
    | bytearray
    | memoryview
    | str
    | os.PathLike[str]
    | media_pb2.Audio
)

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3"}


def _u32(value: int) -> bytes:
    return struct.pack("<I", value)


def sniff_audio_format(data: bytes) -> media_pb2.AudioFormat.ValueType:
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return media_pb2.AUDIO_FORMAT_WAV
    if data.startswith(b"fLaC"):
        return media_pb2.AUDIO_FORMAT_FLAC
    if data.startswith(b"OggS"):
        return media_pb2.AUDIO_FORMAT_OGG
    if data.startswith(b"ID3") or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return media_pb2.AUDIO_FORMAT_MP3
    return media_pb2.AUDIO_FORMAT_UNSPECIFIED


def looks_like_audio(data: bytes) -> bool:
    return sniff_audio_format(data) != media_pb2.AUDIO_FORMAT_UNSPECIFIED


def to_audio_proto(audio: AudioLike) -> media_pb2.Audio:
    """The request message for any accepted audio input. Samples travel as PCM S16LE."""
    if isinstance(audio, media_pb2.Audio):
        return audio
    if isinstance(audio, tuple):
        audio = AudioClip.from_array(audio[0], audio[1])
    if isinstance(audio, AudioClip):
        return media_pb2.Audio(
            data=audio.pcm_bytes(),
            format=media_pb2.AUDIO_FORMAT_PCM_S16LE,
            sample_rate_hz=audio.sample_rate,
            channels=audio.channels,
        )
    if isinstance(audio, bytes | bytearray | memoryview):
        data = bytes(audio)
        return media_pb2.Audio(data=data, format=sniff_audio_format(data))
    if isinstance(audio, str) and "://" in audio:
        return media_pb2.Audio(uri=audio)
    if isinstance(audio, str | os.PathLike):
        data = Path(audio).read_bytes()
        fmt = sniff_audio_format(data)
        if fmt == media_pb2.AUDIO_FORMAT_UNSPECIFIED:
            raise ValueError(f"{audio}: not a WAV, FLAC, OGG or MP3 file (raw PCM needs a rate)")
        return media_pb2.Audio(data=data, format=fmt)
    raise TypeError(f"cannot send {type(audio).__name__} as audio")


def _to_int16(frames: np.ndarray[Any, Any], channels: int) -> np.ndarray[Any, Any]:
    return frames.reshape(-1, channels) if channels > 1 else frames.reshape(-1)


def decode_wav(data: bytes) -> AudioClip:
    """RIFF WAVE with 8/16/24/32-bit PCM or 32/64-bit float samples, as int16."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV file")
    offset, fmt, payload = 12, None, None
    while offset + 8 <= len(data):
        chunk, size = (
            data[offset : offset + 4],
            struct.unpack("<I", data[offset + 4 : offset + 8])[0],
        )
        body = data[offset + 8 : offset + 8 + size]
        if chunk == b"fmt ":
            fmt = body
        elif chunk == b"data":
            payload = body
        offset += 8 + size + (size & 1)  # chunks are word aligned
    if fmt is None or payload is None:
        raise ValueError("WAV file without fmt or data chunk")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's first word
        tag = struct.unpack("<H", fmt[24:26])[0]
    if tag == 3:  # IEEE float
        floats = np.frombuffer(payload, dtype="<f4" if bits == 32 else "<f8")
        return AudioClip.from_array(_to_int16(floats, channels), rate)
    if tag != 1:
        raise ValueError(f"WAV encoding {tag} is not PCM or float")
    if bits == 16:
        samples = np.frombuffer(payload, dtype="<i2")
    elif bits == 8:  # unsigned
        samples = (np.frombuffer(payload, dtype=np.uint8).astype(np.int16) - 128) << 8
    elif bits == 24:
        raw = np.frombuffer(payload[: len(payload) // 3 * 3], dtype=np.uint8).reshape(-1, 3)
        samples = (raw[:, 2].astype(np.int8).astype(np.int16) << 8) | raw[:, 1]
    elif bits == 32:
        samples = (np.frombuffer(payload, dtype="<i4") >> 16).astype(np.int16)
    else:
        raise ValueError(f"{bits}-bit WAV is not supported")
    return AudioClip(_to_int16(samples.astype(np.int16), channels), rate)


def _decode_with_soundfile(data: bytes) -> AudioClip:
    try:
        import soundfile  # type: ignore[import-untyped, unused-ignore]
    except ImportError as exc:
        raise ValueError("decoding FLAC/OGG/MP3 needs the soundfile package") from exc
    samples, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    return AudioClip(samples, int(rate))


def from_audio_proto(audio: media_pb2.Audio) -> AudioClip:
    """Samples of an audio message from a response."""
    fmt = audio.format or sniff_audio_format(audio.data)
    if fmt == media_pb2.AUDIO_FORMAT_PCM_S16LE:
        samples = np.frombuffer(audio.data[: len(audio.data) // 2 * 2], dtype="<i2")
        return AudioClip(
            _to_int16(samples.astype(np.int16), audio.channels or 1), audio.sample_rate_hz
        )
    if fmt == media_pb2.AUDIO_FORMAT_WAV:
        return decode_wav(audio.data)
    return _decode_with_soundfile(audio.data)
