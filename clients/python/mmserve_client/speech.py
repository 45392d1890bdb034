"""Results and stream events of plain speech: Synthesize (text to speech, verbatim) and
Transcribe (speech to text with timed segments)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from mmserve.common.v1 import media_pb2

from .audio import AudioClip, from_audio_proto
from .events import Accepted, Heartbeat, Queued
from .results import Usage

# Names the SDK and the CLI take for SynthesizeRequest.format (OpenAI's response_format names).
SPEECH_FORMATS = ("wav", "pcm", "flac", "mp3", "opus", "aac")


@dataclass(frozen=True)
class Speech:
    """Synthesized speech: one file in `format` ("wav", "pcm", "flac", "mp3", "opus")."""

    job_id: str
    data: bytes
    format: str
    media_type: str
    sample_rate: int
    seconds: float
    voice: str
    usage: Usage

    def save(self, path: str | os.PathLike[str]) -> Path:
        target = Path(path)
        target.write_bytes(self.data)
        return target

    def clip(self) -> AudioClip:
        """The samples (WAV and PCM decoded here; other formats need `soundfile`)."""
        formats = {
            "wav": media_pb2.AUDIO_FORMAT_WAV,
            "pcm": media_pb2.AUDIO_FORMAT_PCM_S16LE,
            "flac": media_pb2.AUDIO_FORMAT_FLAC,
            "mp3": media_pb2.AUDIO_FORMAT_MP3,
            "opus": media_pb2.AUDIO_FORMAT_OGG,
        }
        return from_audio_proto(
            media_pb2.Audio(
                data=self.data,
                format=formats.get(self.format, media_pb2.AUDIO_FORMAT_UNSPECIFIED),
                sample_rate_hz=self.sample_rate,
                channels=1,
            )
        )


@dataclass(frozen=True)
class SpeechStarted:
    """The voice runs; what the pieces that follow hold."""

    job_id: str
    format: str
    sample_rate: int
    voice: str
    media_type: str


@dataclass(frozen=True)
class SpeechPiece:
    """The next bytes of the speech file; all pieces' `data` joined is the file."""

    job_id: str
    data: bytes
    index: int
    end_seconds: float


@dataclass(frozen=True)
class SpeechCompleted:
    """A synthesis stream ended (last event)."""

    job_id: str
    seconds: float
    chunks: int
    usage: Usage


@dataclass(frozen=True)
class Segment:
    """A timed piece of a transcript (times in seconds from the clip's start)."""

    index: int
    start: float
    end: float
    text: str
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 0.0
    temperature: float = 0.0
    tokens: tuple[int, ...] = ()
    seek: int = 0


@dataclass(frozen=True)
class Transcription:
    """What a clip says: the whole text, its language, and timed segments."""

    job_id: str
    text: str
    language: str
    duration: float
    segments: tuple[Segment, ...]
    usage: Usage
    language_probability: float = 1.0


@dataclass(frozen=True)
class TranscriptionStarted:
    """The recognizer runs; the language is known."""

    job_id: str
    language: str
    duration: float
    language_probability: float


@dataclass(frozen=True)
class SegmentDone:
    """A finished segment of a transcription stream."""

    job_id: str
    segment: Segment


@dataclass(frozen=True)
class TranscriptionCompleted:
    """A transcription stream ended (last event): the whole text."""

    job_id: str
    text: str
    segments: int
    usage: Usage


SpeechEvent: TypeAlias = (
    Accepted | Queued | Heartbeat | SpeechStarted | SpeechPiece | SpeechCompleted
)
TranscriptionEvent: TypeAlias = (
    Accepted | Queued | Heartbeat | TranscriptionStarted | SegmentDone | TranscriptionCompleted
)
