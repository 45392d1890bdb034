"""Speech to text without a chat model: timed segments from the recognizer (Whisper).

No gRPC here. `transcribe` runs on the device thread; the recognizer makes segments lazily, so
a stream emits each one as soon as it is decoded and a cancel stops between segments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from services.omni.asr import WhisperAsr
from services.omni.turns import ASR_RATE, FloatAudio


@dataclass(frozen=True)
class TranscriptionJob:
    samples: FloatAudio  # mono float32 at ASR_RATE
    language: str  # "" detects
    prompt: str
    temperature: float
    vad_filter: bool
    stream: bool

    @property
    def seconds(self) -> float:
        return len(self.samples) / ASR_RATE


@dataclass(frozen=True)
class TranscriptionBegins:
    """Streamed first: the language is known (given or detected)."""

    language: str
    duration_seconds: float
    language_probability: float


@dataclass(frozen=True)
class Segment:
    index: int
    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float
    tokens: tuple[int, ...]
    seek: int


@dataclass(frozen=True)
class TranscriptionResult:
    text: str
    language: str
    language_probability: float
    duration_seconds: float
    segments: tuple[Segment, ...]

    @property
    def tokens(self) -> int:
        return sum(len(segment.tokens) for segment in self.segments)


def transcribe(
    asr: WhisperAsr,
    job: TranscriptionJob,
    *,
    emit: Callable[[object], None],
    check: Callable[[], None],
) -> TranscriptionResult:
    """Transcribes `job.samples`; a stream emits TranscriptionBegins then each Segment. `check`
    raises once the job is cancelled or past its deadline."""
    info, produced = asr.segments(
        job.samples,
        language=job.language,
        prompt=job.prompt,
        temperature=job.temperature,
        vad_filter=job.vad_filter,
    )
    given = bool(job.language)
    probability = 1.0 if given else float(info.language_probability)
    if job.stream:
        emit(TranscriptionBegins(info.language, job.seconds, probability))
    segments: list[Segment] = []
    for found in produced:
        check()
        segment = Segment(
            index=len(segments),
            start=float(found.start),
            end=float(found.end),
            text=found.text,
            avg_logprob=float(found.avg_logprob),
            no_speech_prob=float(found.no_speech_prob),
            compression_ratio=float(found.compression_ratio),
            temperature=float(found.temperature or 0.0),
            tokens=tuple(int(t) for t in found.tokens),
            seek=int(found.seek),
        )
        segments.append(segment)
        if job.stream:
            emit(segment)
    return TranscriptionResult(
        text=joined_text(segments),
        language=info.language,
        language_probability=probability,
        duration_seconds=job.seconds,
        segments=tuple(segments),
    )


def joined_text(segments: tuple[Segment, ...] | list[Segment]) -> str:
    """The transcript of segments (each carries its own leading space)."""
    return "".join(segment.text for segment in segments).strip()
