"""Synthesize / StreamSynthesize and Transcribe / StreamTranscribe as operations: plain speech
through the service's TTS voice and recognizer, never the chat model. Requests are checked on
the loop (every bad field named at once), audio decoded on the CPU pool, the voice or the
recognizer run on the device thread as a job (queue, ETA, cancel, deadline), files encoded on
the CPU pool."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmserve.common.v1 import media_pb2
from mmserve.omni.v1 import omni_pb2
from services.omni.asr import WhisperAsr
from services.omni.audio import AudioLimits
from services.omni.config import OmniSettings
from services.omni.engine import OmniEngine
from services.omni.requests import MediaPolicy, decode_audio_message
from services.omni.speech_encoding import FORMATS, SpeechFormat, encodable, encode_whole
from services.omni.synthesis import (
    MAX_SPEED,
    MIN_SPEED,
    SpeechPiece,
    SynthesisBegins,
    SynthesisJob,
    SynthesisResult,
    synthesize,
)
from services.omni.transcription import (
    Segment,
    TranscriptionBegins,
    TranscriptionJob,
    TranscriptionResult,
    joined_text,
    transcribe,
)
from services.omni.tts import PiperTts
from services.runtime import job_protos
from services.runtime.app import ServiceRuntime
from services.runtime.errors import Unimplemented, Violations
from services.runtime.executor import JobContext
from services.runtime.operations import CallFacts, Operation, StreamRenderer, Usage

MIN_OUTPUT_RATE = 8000
MAX_OUTPUT_RATE = 48000
MAX_PROMPT_CHARS = 1000

FORMAT_NAMES = {
    omni_pb2.SPEECH_FORMAT_UNSPECIFIED: "WAV",
    omni_pb2.SPEECH_FORMAT_WAV: "WAV",
    omni_pb2.SPEECH_FORMAT_PCM_S16LE: "PCM",
    omni_pb2.SPEECH_FORMAT_FLAC: "FLAC",
    omni_pb2.SPEECH_FORMAT_MP3: "MP3",
    omni_pb2.SPEECH_FORMAT_OPUS: "OPUS",
    omni_pb2.SPEECH_FORMAT_AAC: "AAC",
}
FORMAT_ENUMS = {name: value for value, name in FORMAT_NAMES.items() if value}
_AUDIO_FORMATS = {
    "WAV": media_pb2.AUDIO_FORMAT_WAV,
    "PCM": media_pb2.AUDIO_FORMAT_PCM_S16LE,
    "FLAC": media_pb2.AUDIO_FORMAT_FLAC,
    "MP3": media_pb2.AUDIO_FORMAT_MP3,
    "OPUS": media_pb2.AUDIO_FORMAT_OGG,
}


def _drop(_: object) -> None:
    """Unary jobs send nothing while they run."""


def served_tts(engine: OmniEngine) -> PiperTts:
    if engine.tts is None:
        raise Unimplemented(
            "Synthesize is not served: no TTS voice is loaded (tts_model = none, or a model "
            "that speaks natively without standalone_speech)"
        )
    return engine.tts


def served_asr(engine: OmniEngine) -> WhisperAsr:
    if engine.asr is None:
        raise Unimplemented(
            "Transcribe is not served: no speech recognizer is loaded (asr_model = none, or a "
            "model that hears natively without standalone_speech)"
        )
    return engine.asr


def default_voice(engine: OmniEngine, tts: PiperTts) -> str:
    wanted = engine.settings.default_voice
    return wanted if wanted in tts.speakers else tts.speakers[0]


# ---- Synthesize -------------------------------------------------------------------------------


class SynthesizeOperation(Operation[SynthesisJob, SynthesisJob, SynthesisResult]):
    """Synthesize and StreamSynthesize."""

    kind = "synthesize"

    def __init__(self, runtime: ServiceRuntime) -> None:
        super().__init__(runtime)
        self.engine = runtime.engine_as(OmniEngine)
        self.settings = runtime.settings_as(OmniSettings)

    def parse(self, message: omni_pb2.SynthesizeRequest, call: CallFacts) -> SynthesisJob:
        tts = served_tts(self.engine)
        problems = Violations()
        text = message.text.strip()
        limit = self.settings.synthesize_max_chars
        if not text:
            problems.add("text", "must not be empty")
        elif len(text) > limit:
            problems.add("text", f"is {len(text)} characters; the limit is {limit}")
        voice = message.voice or default_voice(self.engine, tts)
        if voice not in tts.speakers:
            problems.add("voice", f"unknown voice {voice!r}; voices: {', '.join(tts.speakers)}")
        fmt = self._format(message.format, problems)
        speed = message.speed or 1.0
        if not MIN_SPEED <= speed <= MAX_SPEED:
            problems.add("speed", f"must be within {MIN_SPEED:g}..{MAX_SPEED:g}, got {speed:g}")
        elif speed != 1.0 and not tts.supports_speed:
            problems.add("speed", "this voice cannot change its speaking rate")
        rate = message.sample_rate_hz or tts.sample_rate
        if not MIN_OUTPUT_RATE <= rate <= MAX_OUTPUT_RATE:
            problems.add(
                "sample_rate_hz", f"must be within {MIN_OUTPUT_RATE}..{MAX_OUTPUT_RATE} Hz"
            )
        if message.chunk_ms and not 20 <= message.chunk_ms <= 5000:
            problems.add("chunk_ms", "must be within 20..5000")
        problems.raise_if_any()
        assert fmt is not None
        return SynthesisJob(
            text=text,
            voice=voice,
            format=fmt,
            speed=speed,
            sample_rate=fmt.rate_for(rate),
            chunk_ms=message.chunk_ms or self.settings.chunk_ms,
            stream=call.streaming,
        )

    @staticmethod
    def _format(value: int, problems: Violations) -> SpeechFormat | None:
        name = FORMAT_NAMES.get(value)
        if name is None:
            problems.add("format", f"unknown speech format {value}")
            return None
        if name not in encodable():
            problems.add(
                "format",
                f"{name} cannot be encoded by this server; it encodes {', '.join(encodable())}",
            )
            return None
        return FORMATS[name]

    def run(self, prepared: SynthesisJob, ctx: JobContext) -> SynthesisResult:
        emit = ctx.emit if prepared.stream else _drop
        return synthesize(served_tts(self.engine), prepared, emit=emit, check=ctx.check)

    async def render(self, result: SynthesisResult, usage: Usage) -> omni_pb2.SynthesizeResponse:
        job = result.job
        data = await self.runtime.run_cpu(
            encode_whole, job.format, result.samples, result.sample_rate
        )
        return omni_pb2.SynthesizeResponse(
            audio=media_pb2.Audio(
                data=data,
                format=_AUDIO_FORMATS[job.format.name],
                sample_rate_hz=result.sample_rate,
                channels=1,
            ),
            format=FORMAT_ENUMS[job.format.name],
            audio_seconds=result.seconds,
            voice=job.voice,
            usage=job_protos.usage(usage),
            media_type=job.format.media_type,
        )

    def stream_renderer(self, prepared: SynthesisJob) -> StreamRenderer[SynthesisResult]:
        return SynthesisStream()


class SynthesisStream(StreamRenderer[SynthesisResult]):
    """A cancel from another connection still ends the stream with `completed`: the speech
    sent until then."""

    def __init__(self) -> None:
        self._seconds = 0.0
        self._chunks = 0
        self._format = omni_pb2.SPEECH_FORMAT_UNSPECIFIED

    async def output(self, payload: Any) -> omni_pb2.StreamSynthesizeResponse | None:
        reply = omni_pb2.StreamSynthesizeResponse()
        if isinstance(payload, SynthesisBegins):
            self._format = FORMAT_ENUMS[payload.format.name]
            reply.started.format = self._format
            reply.started.sample_rate_hz = payload.sample_rate
            reply.started.voice = payload.voice
            reply.started.media_type = payload.format.media_type
        elif isinstance(payload, SpeechPiece):
            reply.audio.data = payload.data
            reply.audio.index = payload.index
            reply.audio.end_seconds = payload.end_seconds
            reply.audio.format = self._format
            self._seconds, self._chunks = payload.end_seconds, payload.index + 1
        else:
            return None
        return reply

    async def done(
        self, result: SynthesisResult, usage: Usage
    ) -> omni_pb2.StreamSynthesizeResponse:
        return self._completed(result.seconds, result.chunks, usage)

    async def cancelled(self, usage: Usage) -> omni_pb2.StreamSynthesizeResponse:
        return self._completed(self._seconds, self._chunks, usage)

    @staticmethod
    def _completed(seconds: float, chunks: int, usage: Usage) -> omni_pb2.StreamSynthesizeResponse:
        reply = omni_pb2.StreamSynthesizeResponse()
        reply.completed.audio_seconds = seconds
        reply.completed.chunks = chunks
        reply.completed.usage.CopyFrom(job_protos.usage(usage))
        return reply


# ---- Transcribe -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TranscribeCall:
    audio: media_pb2.Audio
    language: str
    prompt: str
    temperature: float
    stream: bool


class TranscribeOperation(Operation[TranscribeCall, TranscriptionJob, TranscriptionResult]):
    """Transcribe and StreamTranscribe."""

    kind = "transcribe"

    def __init__(self, runtime: ServiceRuntime, policy: MediaPolicy) -> None:
        super().__init__(runtime)
        self.engine = runtime.engine_as(OmniEngine)
        self.settings = runtime.settings_as(OmniSettings)
        self.policy = policy

    def parse(self, message: omni_pb2.TranscribeRequest, call: CallFacts) -> TranscribeCall:
        asr = served_asr(self.engine)
        problems = Violations()
        if not message.HasField("audio"):
            problems.add("audio", "an audio clip is required")
        language = message.language.strip().lower()
        if language and language not in asr.languages:
            problems.add(
                "language",
                f"{message.language!r} is not a language this recognizer transcribes "
                f"({_languages(asr)})",
            )
        if len(message.prompt) > MAX_PROMPT_CHARS:
            problems.add("prompt", f"at most {MAX_PROMPT_CHARS} characters")
        if not 0.0 <= message.temperature <= 1.0:
            problems.add("temperature", "must be within 0..1")
        problems.raise_if_any()
        return TranscribeCall(
            message.audio,
            language or asr.default_language,
            message.prompt,
            message.temperature,
            call.streaming,
        )

    def prepare(self, request: TranscribeCall) -> TranscriptionJob:
        settings = self.settings
        limits = AudioLimits(settings.transcribe_max_seconds, settings.max_audio_bytes)
        samples = decode_audio_message(request.audio, "audio", self.policy, limits)
        return TranscriptionJob(
            samples=samples,
            language=request.language,
            prompt=request.prompt,
            temperature=request.temperature,
            vad_filter=settings.transcribe_vad_filter,
            stream=request.stream,
        )

    def run(self, prepared: TranscriptionJob, ctx: JobContext) -> TranscriptionResult:
        emit = ctx.emit if prepared.stream else _drop
        return transcribe(served_asr(self.engine), prepared, emit=emit, check=ctx.check)

    async def render(
        self, result: TranscriptionResult, usage: Usage
    ) -> omni_pb2.TranscribeResponse:
        return omni_pb2.TranscribeResponse(
            text=result.text,
            language=result.language,
            duration_seconds=result.duration_seconds,
            segments=[segment_proto(segment) for segment in result.segments],
            usage=job_protos.usage(usage, output_tokens=result.tokens),
            language_probability=result.language_probability,
        )

    def stream_renderer(self, prepared: TranscriptionJob) -> StreamRenderer[TranscriptionResult]:
        return TranscriptionStream()


def _languages(asr: WhisperAsr) -> str:
    languages = asr.languages
    return "only en" if languages == ("en",) else f"{len(languages)} ISO-639-1 codes"


def segment_proto(segment: Segment) -> omni_pb2.TranscriptionSegment:
    return omni_pb2.TranscriptionSegment(
        index=segment.index,
        start_seconds=segment.start,
        end_seconds=segment.end,
        text=segment.text,
        avg_logprob=segment.avg_logprob,
        no_speech_prob=segment.no_speech_prob,
        compression_ratio=segment.compression_ratio,
        temperature=segment.temperature,
        tokens=segment.tokens,
        seek=segment.seek,
    )


class TranscriptionStream(StreamRenderer[TranscriptionResult]):
    """A cancel from another connection still ends the stream with `completed`: the text of
    the segments sent until then."""

    def __init__(self) -> None:
        self._segments: list[Segment] = []

    async def output(self, payload: Any) -> omni_pb2.StreamTranscribeResponse | None:
        reply = omni_pb2.StreamTranscribeResponse()
        if isinstance(payload, TranscriptionBegins):
            reply.started.language = payload.language
            reply.started.duration_seconds = payload.duration_seconds
            reply.started.language_probability = payload.language_probability
        elif isinstance(payload, Segment):
            self._segments.append(payload)
            reply.segment.CopyFrom(segment_proto(payload))
        else:
            return None
        return reply

    async def done(
        self, result: TranscriptionResult, usage: Usage
    ) -> omni_pb2.StreamTranscribeResponse:
        return self._completed(result.segments, usage)

    async def cancelled(self, usage: Usage) -> omni_pb2.StreamTranscribeResponse:
        return self._completed(tuple(self._segments), usage)

    @staticmethod
    def _completed(
        segments: tuple[Segment, ...], usage: Usage
    ) -> omni_pb2.StreamTranscribeResponse:
        reply = omni_pb2.StreamTranscribeResponse()
        reply.completed.text = joined_text(segments)
        reply.completed.segments = len(segments)
        tokens = sum(len(segment.tokens) for segment in segments)
        reply.completed.usage.CopyFrom(job_protos.usage(usage, output_tokens=tokens))
        return reply


# ---- model info -------------------------------------------------------------------------------


def fill_speech_info(reply: omni_pb2.GetModelInfoResponse, engine: OmniEngine) -> None:
    """GetModelInfo's flags and details for Synthesize and Transcribe (model loaded)."""
    settings = engine.settings
    if engine.tts is not None:
        tts = engine.tts
        reply.supports_synthesize = True
        reply.synthesis.voices.extend(tts.speakers)
        reply.synthesis.default_voice = default_voice(engine, tts)
        reply.synthesis.sample_rate_hz = tts.sample_rate
        reply.synthesis.formats.extend(FORMAT_ENUMS[name] for name in encodable())
        reply.synthesis.supports_speed = tts.supports_speed
        reply.synthesis.max_chars = settings.synthesize_max_chars
        reply.synthesis.engine = tts.name
    if engine.asr is not None:
        asr = engine.asr
        reply.supports_transcribe = True
        reply.transcription.languages.extend(asr.languages)
        reply.transcription.default_language = asr.default_language
        reply.transcription.max_seconds = settings.transcribe_max_seconds
        reply.transcription.vad_filter = settings.transcribe_vad_filter
        reply.transcription.engine = asr.name


def speech_handlers(
    runtime: ServiceRuntime, policy: MediaPolicy
) -> dict[str, Operation[Any, Any, Any]]:
    synthesize_op = SynthesizeOperation(runtime)
    transcribe_op = TranscribeOperation(runtime, policy)
    return {
        "Synthesize": synthesize_op,
        "StreamSynthesize": synthesize_op,
        "Transcribe": transcribe_op,
        "StreamTranscribe": transcribe_op,
    }
