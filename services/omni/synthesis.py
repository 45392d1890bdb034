"""Text to speech without a chat model: the given text, verbatim, through the TTS voice.

No gRPC here. `synthesize` runs on the device thread: Piper speaks sentence by sentence, each
sentence is resampled to the asked rate and, for a stream, encoded and emitted at once (cut into
pieces of the asked length), so the first audio leaves after the first sentence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from services.omni.audio import resample
from services.omni.speech_encoding import SpeechFormat, StreamEncoder
from services.omni.tts import PiperTts
from services.omni.turns import FloatAudio
from services.runtime.errors import InvalidArgument

MIN_SPEED = 0.25
MAX_SPEED = 4.0


@dataclass(frozen=True)
class SynthesisJob:
    text: str
    voice: str
    format: SpeechFormat
    speed: float
    sample_rate: int  # of the output, already coerced to what the format takes
    chunk_ms: int
    stream: bool


@dataclass(frozen=True)
class SynthesisBegins:
    """Streamed first: what the pieces that follow hold."""

    format: SpeechFormat
    sample_rate: int
    voice: str


@dataclass(frozen=True)
class SpeechPiece:
    """Streamed: the next bytes of the encoded file, and the seconds encoded so far."""

    data: bytes
    index: int
    end_seconds: float


@dataclass(frozen=True)
class SynthesisResult:
    samples: FloatAudio  # mono float32 at sample_rate; empty for a stream (already sent)
    sample_rate: int
    seconds: float
    chunks: int
    job: SynthesisJob


class _Pieces:
    """Cuts the audio of a stream into pieces of chunk_ms and encodes each as it is cut."""

    def __init__(self, job: SynthesisJob, emit: Callable[[object], None]) -> None:
        self._encoder = StreamEncoder(job.format, job.sample_rate)
        self._size = max(1, job.sample_rate * job.chunk_ms // 1000)
        self._pending: FloatAudio = np.zeros(0, dtype=np.float32)
        self._emit = emit
        self._rate = job.sample_rate
        self.samples = 0
        self.index = 0

    def push(self, samples: FloatAudio) -> None:
        self._pending = np.concatenate([self._pending, samples])
        while len(self._pending) >= self._size:
            piece, self._pending = self._pending[: self._size], self._pending[self._size :]
            self._send(self._encoder.push(piece), len(piece))

    def finish(self) -> None:
        tail = self._encoder.push(self._pending) if len(self._pending) else b""
        self._send(tail + self._encoder.finish(), len(self._pending))
        self._pending = np.zeros(0, dtype=np.float32)

    def _send(self, data: bytes, samples: int) -> None:
        self.samples += samples
        if not data:  # a compressed format still buffering
            return
        self._emit(SpeechPiece(data, self.index, self.samples / self._rate))
        self.index += 1


def synthesize(
    tts: PiperTts,
    job: SynthesisJob,
    *,
    emit: Callable[[object], None],
    check: Callable[[], None],
) -> SynthesisResult:
    """Speaks `job.text`; a stream emits SynthesisBegins then SpeechPieces, a unary job returns
    the samples. `check` raises once the job is cancelled or past its deadline."""
    pieces = _Pieces(job, emit) if job.stream else None
    if pieces is not None:
        emit(SynthesisBegins(job.format, job.sample_rate, job.voice))
    kept: list[FloatAudio] = []
    total = 0
    for sentence in tts.synthesize(job.text, job.voice, job.speed):
        check()  # between sentences: a cancel stops the voice within one sentence
        audio = resample(sentence.astype(np.float32), tts.sample_rate, job.sample_rate)
        total += len(audio)
        if pieces is not None:
            pieces.push(audio)
        else:
            kept.append(audio)
    if total == 0:
        raise InvalidArgument.for_field("text", "nothing in the text can be spoken")
    if pieces is not None:
        pieces.finish()
    samples = np.concatenate(kept) if kept else np.zeros(0, dtype=np.float32)
    return SynthesisResult(
        samples=samples,
        sample_rate=job.sample_rate,
        seconds=total / job.sample_rate,
        chunks=pieces.index if pieces is not None else 0,
        job=job,
    )
