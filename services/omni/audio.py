"""Decoding client audio (WAV, FLAC, Ogg, MP3 through libsndfile; raw PCM_S16LE), resampling,
and encoding speech out (WAV, PCM chunks).

Every clip a client sends is untrusted: sizes and durations are checked from the header before
any sample is decoded, and every refusal is an InvalidArgument naming the request field. These
functions are pure and blocking: the operations run them in the CPU pool, never on the device
thread. Resampling is a windowed-sinc polyphase filter in numpy, so no extra native library is
needed and the result is the same on every machine.
"""

from __future__ import annotations

import io
import math
import wave
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile

from services.omni.turns import ASR_RATE, FloatAudio
from services.runtime.errors import InvalidArgument

MIN_RATE = 8000
MAX_RATE = 192000
CONTAINER_FORMATS = ("WAV", "FLAC", "OGG", "MP3")
PCM = "PCM_S16LE"
_SINC_HALF_WIDTH = 16  # taps on each side at the lower of the two rates
_KAISER_BETA = 8.6
_BLOCK = 16384  # output samples per vectorized block (bounds temporary memory)


@dataclass(frozen=True)
class AudioLimits:
    max_seconds: float
    max_bytes: int
    min_seconds: float = 0.0


def sniff_format(data: bytes) -> str | None:
    """The container format from its magic bytes, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "WAV"
    if data[:4] == b"fLaC":
        return "FLAC"
    if data[:4] == b"OggS":
        return "OGG"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "MP3"
    return None


def decode_audio(
    data: bytes,
    fmt: str | None,
    *,
    field: str,
    limits: AudioLimits,
    sample_rate: int = 0,
    channels: int = 0,
    target_rate: int = ASR_RATE,
) -> FloatAudio:
    """Mono float32 samples at `target_rate` from an encoded clip or raw PCM.

    `fmt` is the declared format ("WAV", "FLAC", "OGG", "MP3", "PCM_S16LE") or None to sniff;
    raw PCM must be declared with its `sample_rate` and `channels`."""
    if not data:
        raise InvalidArgument.for_field(f"{field}.data", "audio data is empty")
    if len(data) > limits.max_bytes:
        raise InvalidArgument.for_field(
            f"{field}.data", f"audio is {len(data)} bytes; the limit is {limits.max_bytes}"
        )
    if fmt == PCM:
        samples, rate = _decode_pcm(data, field=field, sample_rate=sample_rate, channels=channels)
    else:
        samples, rate = _decode_container(data, fmt, field=field, limits=limits)
    seconds = len(samples) / rate
    _check_duration(seconds, field=field, limits=limits)
    return resample(samples, rate, target_rate)


def _check_duration(seconds: float, *, field: str, limits: AudioLimits) -> None:
    if seconds > limits.max_seconds:
        raise InvalidArgument.for_field(
            field, f"audio is {seconds:.2f} s long; the limit is {limits.max_seconds:g} s"
        )
    if seconds < limits.min_seconds:
        raise InvalidArgument.for_field(
            field, f"audio is {seconds:.2f} s long; at least {limits.min_seconds:g} s are needed"
        )


def _check_rate(rate: int, *, field: str) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise InvalidArgument.for_field(
            f"{field}.sample_rate_hz", f"must be within {MIN_RATE}..{MAX_RATE} Hz, got {rate}"
        )


def _decode_pcm(
    data: bytes, *, field: str, sample_rate: int, channels: int
) -> tuple[FloatAudio, int]:
    if sample_rate == 0:
        raise InvalidArgument.for_field(
            f"{field}.sample_rate_hz", "raw PCM_S16LE needs its sample rate"
        )
    _check_rate(sample_rate, field=field)
    channels = channels or 1
    if channels not in (1, 2):
        raise InvalidArgument.for_field(f"{field}.channels", "raw PCM must have 1 or 2 channels")
    frame = 2 * channels
    if len(data) % frame:
        raise InvalidArgument.for_field(
            f"{field}.data",
            f"{len(data)} bytes is not a whole number of {channels}-channel 16-bit frames",
        )
    ints = np.frombuffer(data, dtype="<i2").reshape(-1, channels)
    return (ints.astype(np.float32).mean(axis=1) / 32768.0).astype(np.float32), sample_rate


def _decode_container(
    data: bytes, fmt: str | None, *, field: str, limits: AudioLimits
) -> tuple[FloatAudio, int]:
    sniffed = sniff_format(data)
    if fmt is not None and fmt not in CONTAINER_FORMATS:
        raise InvalidArgument.for_field(f"{field}.format", f"audio format {fmt} is not accepted")
    if sniffed is None:
        hint = "" if fmt else "; raw PCM must state format PCM_S16LE, sample_rate_hz and channels"
        raise InvalidArgument.for_field(f"{field}.data", f"not a WAV, FLAC, Ogg or MP3 file{hint}")
    if fmt is not None and fmt != sniffed:
        raise InvalidArgument.for_field(
            f"{field}.format", f"declared {fmt} but the data is {sniffed}"
        )
    try:
        # The header alone first: a tiny file may claim hours of audio.
        info = soundfile.info(io.BytesIO(data))
        if info.frames <= 0 or info.samplerate <= 0:
            raise InvalidArgument.for_field(f"{field}.data", "the audio holds no samples")
        _check_rate(int(info.samplerate), field=field)
        _check_duration(info.frames / info.samplerate, field=field, limits=limits)
        values, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except InvalidArgument:
        raise
    except (RuntimeError, ValueError, TypeError, soundfile.LibsndfileError) as exc:
        raise InvalidArgument.for_field(
            f"{field}.data", f"unreadable {sniffed} audio: {exc}"
        ) from None
    if values.shape[0] == 0:
        raise InvalidArgument.for_field(f"{field}.data", "the audio holds no samples")
    mono = np.nan_to_num(values.mean(axis=1), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(mono, -1.0, 1.0).astype(np.float32), int(rate)


# ---- resampling -------------------------------------------------------------------------------


def _kaiser(distance: np.ndarray[Any, Any], half_width: float) -> np.ndarray[Any, Any]:
    ratio = np.clip(distance / half_width, -1.0, 1.0)
    return np.i0(_KAISER_BETA * np.sqrt(1.0 - ratio**2)) / np.i0(_KAISER_BETA)


def _filter_bank(up: int, cutoff: float, half_width: int) -> np.ndarray[Any, Any]:
    """One low-pass interpolation filter per output phase (fractional input offset)."""
    offsets = np.arange(-half_width + 1, half_width + 1, dtype=np.float64)  # j, relative to floor
    phases = np.arange(up, dtype=np.float64)[:, None] / up
    distance = offsets[None, :] - phases
    bank = cutoff * np.sinc(cutoff * distance) * _kaiser(distance, half_width + 1.0)
    bank /= bank.sum(axis=1, keepdims=True)  # unity gain at DC for every phase
    return bank.astype(np.float32)


def resample(samples: FloatAudio, source_rate: int, target_rate: int) -> FloatAudio:
    """Band-limited resampling (windowed sinc, Kaiser window) of mono float32 audio."""
    if source_rate == target_rate or len(samples) == 0:
        return samples.astype(np.float32, copy=False)
    divisor = math.gcd(source_rate, target_rate)
    up, down = target_rate // divisor, source_rate // divisor
    cutoff = min(1.0, target_rate / source_rate) * 0.95  # leave room for the transition band
    half_width = math.ceil(_SINC_HALF_WIDTH / min(1.0, target_rate / source_rate))
    bank = _filter_bank(up, cutoff, half_width)
    padded = np.concatenate(
        [
            np.zeros(half_width, np.float32),
            samples.astype(np.float32),
            np.zeros(half_width + 1, np.float32),
        ]
    )
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half_width)
    total = (len(samples) * up + down - 1) // down
    out = np.empty(total, dtype=np.float32)
    for start in range(0, total, _BLOCK):
        n = np.arange(start, min(total, start + _BLOCK), dtype=np.int64)
        position = n * down
        index, phase = position // up, position % up
        out[start : start + len(n)] = np.einsum("ij,ij->i", windows[index + 1], bank[phase])
    return out


# ---- encoding ---------------------------------------------------------------------------------


def to_pcm16(samples: FloatAudio) -> bytes:
    """PCM_S16LE bytes of float samples in [-1, 1] (clipped)."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def wav_bytes(pcm: bytes, sample_rate: int) -> bytes:
    """A mono 16-bit WAV file around PCM_S16LE bytes."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes(pcm)
    return buffer.getvalue()


def chunk_bytes(sample_rate: int, chunk_ms: int) -> int:
    """Bytes of one PCM_S16LE mono chunk of `chunk_ms` (at least one sample)."""
    return max(1, sample_rate * chunk_ms // 1000) * 2


class PcmChunker:
    """Cuts a stream of PCM_S16LE pieces into chunks of exactly `chunk_ms` (the last may be
    shorter), numbering them from 0, so clients get the size they asked for whatever sizes the
    synthesizer produces."""

    def __init__(self, sample_rate: int, chunk_ms: int) -> None:
        self.sample_rate = sample_rate
        self._size = chunk_bytes(sample_rate, chunk_ms)
        self._pending = b""
        self.index = 0
        self.total_bytes = 0

    def push(self, pcm: bytes) -> list[tuple[int, bytes]]:
        self._pending += pcm
        chunks: list[tuple[int, bytes]] = []
        while len(self._pending) >= self._size:
            chunks.append(self._take(self._size))
        return chunks

    def flush(self) -> list[tuple[int, bytes]]:
        return [self._take(len(self._pending))] if self._pending else []

    def _take(self, size: int) -> tuple[int, bytes]:
        piece, self._pending = self._pending[:size], self._pending[size:]
        index = self.index
        self.index += 1
        self.total_bytes += len(piece)
        return index, piece

    @property
    def seconds(self) -> float:
        return self.total_bytes / 2 / self.sample_rate
