"""Encoding synthesized speech into the formats clients ask for (WAV, raw PCM, FLAC, MP3, Ogg
Opus), whole or as a stream of byte pieces that concatenate into one playable file.

Compressed formats go through libsndfile (soundfile), whose build decides what is available:
`encodable()` asks it once. Streaming works because libsndfile writes these formats front to
back; the few header bytes it patches when the file is closed (MP3's info frame) are already
sent by then, blank, which decoders play as 1 frame of silence. FLAC streams send the
closed file at the end. The unary result is always the closed file, patches included.
"""

from __future__ import annotations

import functools
import io
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile

from services.omni.audio import to_pcm16, wav_bytes
from services.omni.turns import FloatAudio

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


@dataclass(frozen=True)
class SpeechFormat:
    name: str  # "WAV", "PCM", "FLAC", "MP3", "OPUS", "AAC"
    media_type: str
    container: str = ""  # libsndfile major format; "" when encoded here or not at all
    subtype: str = ""
    # False: a stream sends the whole closed file at the end. libsndfile's FLAC writer states
    # the total length only on close, and many readers (libsndfile's own) cannot seek in a FLAC
    # stream without it.
    incremental: bool = True

    def rate_for(self, rate: int) -> int:
        """The sample rate the encoder takes for a wanted `rate` (Opus has five)."""
        if self.name != "OPUS":
            return rate
        return next((r for r in OPUS_RATES if r >= rate), OPUS_RATES[-1])


FORMATS = {
    "WAV": SpeechFormat("WAV", "audio/wav"),
    "PCM": SpeechFormat("PCM", "audio/pcm"),
    "FLAC": SpeechFormat("FLAC", "audio/flac", "FLAC", "PCM_16", incremental=False),
    "MP3": SpeechFormat("MP3", "audio/mpeg", "MP3", "MPEG_LAYER_III"),
    "OPUS": SpeechFormat("OPUS", "audio/ogg", "OGG", "OPUS"),
    # No encoder for AAC ships with libsndfile; it is named so the refusal can say so.
    "AAC": SpeechFormat("AAC", "audio/aac"),
}


@functools.cache
def encodable() -> tuple[str, ...]:
    """Names of the formats this process can encode, in FORMATS order."""
    majors = soundfile.available_formats()

    def available(fmt: SpeechFormat) -> bool:
        if fmt.name in ("WAV", "PCM"):
            return True
        if not fmt.container or fmt.container not in majors:
            return False
        return fmt.subtype in soundfile.available_subtypes(fmt.container)

    return tuple(fmt.name for fmt in FORMATS.values() if available(fmt))


def streaming_wav_header(sample_rate: int) -> bytes:
    """A 16-bit mono WAV header whose sizes say "unknown length" (0xFFFFFFFF)."""
    unknown = 0xFFFFFFFF
    return (
        b"RIFF"
        + struct.pack("<I", unknown)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", unknown)
    )


class _Sink(io.RawIOBase):
    """A seekable in-memory file that remembers how much of its front was handed out."""

    def __init__(self) -> None:
        super().__init__()
        self.buffer = bytearray()
        self._position = 0
        self._sent = 0

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        piece = bytes(data)
        end = self._position + len(piece)
        if end > len(self.buffer):
            self.buffer.extend(b"\0" * (end - len(self.buffer)))
        self.buffer[self._position : end] = piece
        self._position = end
        return len(piece)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self.buffer)}
        self._position = max(0, base[whence] + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        piece = self.buffer[self._position : self._position + len(target)]
        target[: len(piece)] = piece
        self._position += len(piece)
        return len(piece)

    def take_new(self) -> bytes:
        """Bytes written past what was taken before (later patches to taken bytes are lost)."""
        piece = bytes(self.buffer[self._sent :])
        self._sent = len(self.buffer)
        return piece


class StreamEncoder:
    """Encodes mono float audio piece by piece; each call returns the bytes ready to send."""

    def __init__(self, fmt: SpeechFormat, sample_rate: int) -> None:
        self.format = fmt
        self.sample_rate = sample_rate
        self._sink: _Sink | None = None
        self._file: soundfile.SoundFile | None = None
        self._started = False
        if fmt.container:
            self._sink = _Sink()
            self._file = soundfile.SoundFile(
                self._sink,
                "w",
                samplerate=sample_rate,
                channels=1,
                format=fmt.container,
                subtype=fmt.subtype,
                **_options(fmt),
            )

    def push(self, samples: FloatAudio) -> bytes:
        if self._file is not None and self._sink is not None:
            if len(samples):
                self._file.write(np.clip(samples, -1.0, 1.0))
            return self._sink.take_new() if self.format.incremental else b""
        header = b""
        if not self._started and self.format.name == "WAV":
            header = streaming_wav_header(self.sample_rate)
        self._started = True
        return header + to_pcm16(samples)

    def finish(self) -> bytes:
        if self._file is not None and self._sink is not None:
            self._file.close()
            return self._sink.take_new()
        return b"" if self._started or self.format.name != "WAV" else self.push(_EMPTY)


_EMPTY: FloatAudio = np.zeros(0, dtype=np.float32)


def encode_whole(fmt: SpeechFormat, samples: FloatAudio, sample_rate: int) -> bytes:
    """One complete file (headers with exact sizes) of mono float audio."""
    if fmt.name == "WAV":
        return wav_bytes(to_pcm16(samples), sample_rate)
    if fmt.name == "PCM":
        return to_pcm16(samples)
    buffer = io.BytesIO()
    soundfile.write(
        buffer,
        np.clip(samples, -1.0, 1.0),
        sample_rate,
        format=fmt.container,
        subtype=fmt.subtype,
        **_options(fmt),
    )
    return buffer.getvalue()


def _options(fmt: SpeechFormat) -> dict[str, Any]:
    # Constant bitrate (libsndfile applies the mode only with a level; 0.5 is about 80 kbit/s
    # at speech rates): a reader can then tell a streamed MP3's length from its size alone,
    # where a variable-bitrate one needs the info frame that only the closed file has.
    if fmt.name == "MP3":
        return {"bitrate_mode": "CONSTANT", "compression_level": 0.5}
    return {}
