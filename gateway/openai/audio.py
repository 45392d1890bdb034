"""POST /v1/audio/speech -> omni StreamSynthesize (the bytes, or OpenAI's speech SSE events, as
the voice makes them) and POST /v1/audio/transcriptions (multipart) -> omni Transcribe /
StreamTranscribe (json, text, verbose_json, srt, vtt; OpenAI's transcript SSE events)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any, Literal

import grpc
from openai.types.audio import Transcription, TranscriptionVerbose
from openai.types.audio.transcription_segment import TranscriptionSegment
from pydantic import Field
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from gateway.openai import calls, media
from gateway.openai.errors import OpenAIError, from_grpc, invalid, unknown_model
from gateway.openai.schemas import _Body, parse, unsupported
from gateway.openai.state import State
from mmserve.common.v1 import media_pb2
from mmserve.omni.v1 import omni_pb2

# OpenAI's `pcm` speech is 24 kHz 16-bit mono; its clients play it at that rate.
OPENAI_PCM_RATE = 24_000

# OpenAI's own model names, so clients that hard-code them work unchanged: aliases of the
# omni service's speech and transcription.
SPEECH_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-tts")
TRANSCRIPTION_MODELS = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
SPEECH_FORMATS = {
    "wav": omni_pb2.SPEECH_FORMAT_WAV,
    "pcm": omni_pb2.SPEECH_FORMAT_PCM_S16LE,
    "flac": omni_pb2.SPEECH_FORMAT_FLAC,
    "mp3": omni_pb2.SPEECH_FORMAT_MP3,
    "opus": omni_pb2.SPEECH_FORMAT_OPUS,
    "aac": omni_pb2.SPEECH_FORMAT_AAC,
}
MEDIA_TYPES = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
}
TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")


class SpeechBody(_Body):
    model: str
    input: str
    voice: str | dict[str, str] = ""
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] | None = None
    speed: float | None = Field(None, ge=0.25, le=4.0)
    stream_format: Literal["sse", "audio"] | None = None
    instructions: str | None = None


def _speech_param(field: str) -> str:
    return {"text": "input", "format": "response_format"}.get(field, field)


async def _omni_info(state: State, request: Request) -> Any:
    served = (await state.models(request)).get("omni")
    return served.info if served is not None else None


async def _resolve(
    state: State, request: Request, model: str, aliases: tuple[str, ...], endpoint: str
) -> None:
    if model in aliases and "omni" in state.upstreams.stubs:
        return
    if await state.resolve(request, model, ("omni",)) is None:
        raise unknown_model(model, endpoint)


async def speech(request: Request) -> Response:
    state: State = request.app.state.mmserve
    body: SpeechBody = parse(SpeechBody, await state.json(request))
    await _resolve(state, request, body.model, SPEECH_MODELS, "/v1/audio/speech")
    if body.instructions:
        raise unsupported("instructions", "voice instructions are not supported")
    info = await _omni_info(state, request)
    formats = set(info.synthesis.formats) if info is not None else set()
    name = body.response_format
    if name is None:  # OpenAI's default is mp3; WAV where this server cannot encode mp3
        name = "mp3" if omni_pb2.SPEECH_FORMAT_MP3 in formats else "wav"
    voice = body.voice.get("id", "") if isinstance(body.voice, dict) else body.voice
    voices = set(info.synthesis.voices) if info is not None else set()
    voice = media.voice_for(voice, voices)
    message = omni_pb2.SynthesizeRequest(text=body.input, voice=voice, format=SPEECH_FORMATS[name])
    if name == "pcm":
        message.sample_rate_hz = OPENAI_PCM_RATE  # raw samples carry no rate: OpenAI's is fixed
    if body.speed is not None and body.speed != 1.0:
        message.speed = body.speed
    call = state.upstreams.stub("omni").StreamSynthesize(
        message,
        metadata=calls.metadata(request),
        timeout=calls.timeout(request, state.settings.request_timeout_s),
    )
    try:
        accepted = await calls.first(call, _speech_param)
    except BaseException:
        call.cancel()
        raise
    sse = body.stream_format == "sse"

    async def events() -> AsyncIterator[bytes]:
        try:
            while (event := await call.read()) is not grpc.aio.EOF:
                kind = event.WhichOneof("event")
                if kind == "audio":
                    data = event.audio.data
                    if sse:
                        yield calls.sse({"type": "speech.audio.delta", "audio": media.b64(data)})
                    else:
                        yield data
                elif kind == "completed" and sse:
                    usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
                    yield calls.sse({"type": "speech.audio.done", "usage": usage})
                elif sse:
                    yield calls.KEEPALIVE
        except grpc.aio.AioRpcError as exc:
            # Raw audio has no way to say so: the connection is cut short instead.
            if sse:
                yield calls.error_event(from_grpc(exc, _speech_param))
            else:
                raise

    if sse:
        return calls.EventStream(events(), call.cancel, job_id=accepted.job_id)
    return calls.EventStream(
        events(), call.cancel, media_type=MEDIA_TYPES[name], job_id=accepted.job_id
    )


# --- transcriptions ---


def _timestamp(seconds: float, comma: bool) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    sep = "," if comma else "."
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{millis:03d}"


def subtitles(segments: list[Any], kind: str) -> str:
    """SRT or WebVTT cues from the timed segments."""
    lines = ["WEBVTT", ""] if kind == "vtt" else []
    for number, seg in enumerate(segments, start=1):
        if kind == "srt":
            lines.append(str(number))
        start = _timestamp(seg.start_seconds, kind == "srt")
        end = _timestamp(seg.end_seconds, kind == "srt")
        lines += [f"{start} --> {end}", seg.text.strip(), ""]
    return "\n".join(lines)


def _segments(reply: Any) -> list[TranscriptionSegment]:
    return [
        TranscriptionSegment(
            id=seg.index,
            start=seg.start_seconds,
            end=seg.end_seconds,
            text=seg.text,
            avg_logprob=seg.avg_logprob,
            no_speech_prob=seg.no_speech_prob,
            compression_ratio=seg.compression_ratio,
            temperature=seg.temperature,
            tokens=list(seg.tokens),
            seek=seg.seek,
        )
        for seg in reply.segments
    ]


def _transcription_param(field: str) -> str:
    return re.sub(r"^audio.*", "file", field)


def _field(form: Any, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


async def transcriptions(request: Request) -> Response:
    state: State = request.app.state.mmserve
    form = await state.form(request)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise invalid("file: an audio file upload is required", "file")
    model = _field(form, "model")
    if not model:
        raise invalid("model: required", "model")
    await _resolve(state, request, model, TRANSCRIPTION_MODELS, "/v1/audio/transcriptions")
    kind = _field(form, "response_format") or "json"
    if kind not in TRANSCRIPTION_FORMATS:
        raise invalid(
            f"response_format: one of {', '.join(TRANSCRIPTION_FORMATS)}", "response_format"
        )
    granularities = [v for k, v in form.multi_items() if k.startswith("timestamp_granularities")]
    if "word" in granularities:
        raise unsupported("timestamp_granularities", "only 'segment' timestamps are available")
    message = omni_pb2.TranscribeRequest(
        audio=media_pb2.Audio(data=await upload.read()),
        language=_field(form, "language") or "",
        prompt=_field(form, "prompt") or "",
    )
    temperature = _field(form, "temperature")
    if temperature:
        try:
            message.temperature = float(temperature)
        except ValueError:
            raise invalid("temperature: expected a number", "temperature") from None
    stub = state.upstreams.stub("omni")
    meta = calls.metadata(request)
    deadline = calls.timeout(request, state.settings.request_timeout_s)
    if (_field(form, "stream") or "").lower() in ("true", "1"):
        if kind not in ("json", "text"):
            raise unsupported("stream", "streamed transcripts are 'json' or 'text'")
        return await _stream_transcript(stub, message, meta, deadline)
    reply = await calls.unary(
        request, stub.Transcribe(message, metadata=meta, timeout=deadline), _transcription_param
    )
    if kind == "text":
        return PlainTextResponse(reply.text + "\n")
    if kind in ("srt", "vtt"):
        media_type = "text/vtt" if kind == "vtt" else "application/x-subrip"
        return Response(subtitles(list(reply.segments), kind), media_type=media_type)
    if kind == "verbose_json":
        verbose = TranscriptionVerbose(
            text=reply.text,
            language=reply.language,
            duration=reply.duration_seconds,
            segments=_segments(reply),
            usage={"type": "duration", "seconds": reply.duration_seconds},
        )
        return Response(verbose.model_dump_json(exclude_none=True), media_type="application/json")
    result = Transcription(
        text=reply.text, usage={"type": "duration", "seconds": reply.duration_seconds}
    )
    return Response(result.model_dump_json(exclude_none=True), media_type="application/json")


async def _stream_transcript(stub: Any, message: Any, meta: Any, deadline: float) -> Response:
    call = stub.StreamTranscribe(message, metadata=meta, timeout=deadline)
    try:
        accepted = await calls.first(call, _transcription_param)
    except BaseException:
        call.cancel()
        raise

    async def events() -> AsyncIterator[bytes]:
        try:
            while (event := await call.read()) is not grpc.aio.EOF:
                kind = event.WhichOneof("event")
                if kind == "segment":
                    delta = {"type": "transcript.text.delta", "delta": event.segment.text}
                    yield calls.sse(delta)
                elif kind == "completed":
                    yield calls.sse({"type": "transcript.text.done", "text": event.completed.text})
                else:
                    yield calls.KEEPALIVE
        except grpc.aio.AioRpcError as exc:
            yield calls.error_event(from_grpc(exc, _transcription_param))

    return calls.EventStream(events(), call.cancel, job_id=accepted.job_id)


__all__ = ["OpenAIError", "speech", "subtitles", "transcriptions"]
