"""POST /v1/chat/completions -> vl or omni Chat / StreamChat, chosen by `model`."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_audio import ChatCompletionAudio
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta, ChoiceDeltaAudio
from openai.types.chat.chat_completion_message import ChatCompletionMessage
from openai.types.completion_usage import CompletionUsage
from starlette.requests import Request
from starlette.responses import Response

from gateway.openai import calls, media
from gateway.openai.errors import OpenAIError, from_grpc, invalid, path_rewriter, unknown_model
from gateway.openai.schemas import ChatBody, parse, unsupported
from gateway.openai.state import State
from mmserve.common.v1 import chat_pb2
from mmserve.omni.v1 import omni_pb2
from mmserve.vl.v1 import vl_pb2

ENDPOINT = "/v1/chat/completions"
CHAT_CAPABILITIES = ("vl", "omni")
ROLES = {
    "system": chat_pb2.ROLE_SYSTEM,
    "developer": chat_pb2.ROLE_SYSTEM,
    "user": chat_pb2.ROLE_USER,
    "assistant": chat_pb2.ROLE_ASSISTANT,
}
FINISH = {
    chat_pb2.FINISH_REASON_STOP: "stop",
    chat_pb2.FINISH_REASON_LENGTH: "length",
    chat_pb2.FINISH_REASON_CANCELLED: "stop",
    chat_pb2.FINISH_REASON_UNSPECIFIED: "stop",
}
SPEECH_FORMATS = ("wav", "pcm16")


@dataclass(frozen=True)
class Plan:
    """A validated chat request, ready for its capability."""

    body: ChatBody
    capability: str
    message: Any  # vl_pb2.ChatRequest or omni_pb2.ChatRequest
    speech_format: str | None  # "wav" / "pcm16" when speech was asked for


def _refuse_unsupported(body: ChatBody) -> None:
    if body.n not in (None, 1):
        raise unsupported("n", "only n=1 is supported; send n requests for n choices")
    if body.tools:
        raise unsupported("tools", "tool calling is not supported")
    if body.logprobs:
        raise unsupported("logprobs", "log probabilities are not returned")
    if body.top_logprobs:
        raise unsupported("top_logprobs", "log probabilities are not returned")
    if body.logit_bias:
        raise unsupported("logit_bias", "logit_bias is not supported")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name) not in (None, 0, 0.0):
            raise unsupported(name, "only 0 is supported (repetition_penalty is an extension)")
    kind = (body.response_format or {}).get("type", "text")
    if kind != "text":
        raise unsupported("response_format", f"only type 'text' is supported, got {kind!r}")


def _sampling(body: ChatBody) -> chat_pb2.SamplingParams:
    sampling = chat_pb2.SamplingParams()
    limit = body.max_completion_tokens or body.max_tokens
    if limit is not None:
        sampling.max_new_tokens = limit
    if body.temperature is not None:
        sampling.temperature = body.temperature
    if body.top_p is not None:
        sampling.top_p = body.top_p
    if body.seed is not None:
        sampling.seed = body.seed
    if body.top_k is not None:
        sampling.top_k = body.top_k
    if body.repetition_penalty is not None:
        sampling.repetition_penalty = body.repetition_penalty
    if body.stop is not None:
        sampling.stop.extend([body.stop] if isinstance(body.stop, str) else body.stop)
    return sampling


def _messages(body: ChatBody, pb2: Any) -> list[Any]:
    omni = pb2 is omni_pb2
    found = []
    for i, message in enumerate(body.messages):
        where = f"messages[{i}]"
        if message.role not in ROLES:
            raise unsupported(f"{where}.role", f"role {message.role!r} is not supported")
        if message.tool_calls:
            raise unsupported(f"{where}.tool_calls", "tool calls are not supported")
        parts = []
        content = message.content
        if content is None or isinstance(content, str):
            parts.append(pb2.ContentPart(text=content or ""))
        else:
            for j, part in enumerate(content):
                param = f"{where}.content[{j}]"
                if part["type"] == "text":
                    parts.append(pb2.ContentPart(text=part["text"]))
                elif part["type"] == "image_url":
                    image = media.image_from_url(part["image_url"]["url"], f"{param}.image_url.url")
                    parts.append(pb2.ContentPart(image=image))
                elif omni:
                    sound = part["input_audio"]
                    audio = media.audio_from_base64(
                        sound["data"], sound["format"], f"{param}.input_audio"
                    )
                    parts.append(pb2.ContentPart(audio=audio))
                else:
                    raise unsupported(
                        f"{param}.input_audio",
                        f"audio input needs an omni model; '{body.model}' is vision-language",
                    )
        found.append(pb2.ChatMessage(role=ROLES[message.role], content=parts))
    return found


def plan(body: ChatBody, capability: str, voices: set[str] | None = None) -> Plan:
    """The contract's request for `body`; `voices` are the service's (OpenAI voice names it
    lacks become its default voice)."""
    _refuse_unsupported(body)
    pb2 = omni_pb2 if capability == "omni" else vl_pb2
    request = pb2.ChatRequest(messages=_messages(body, pb2), sampling=_sampling(body))
    speech_format = None
    if body.modalities and "audio" in body.modalities:
        if capability != "omni":
            raise unsupported("modalities", "audio output needs an omni model")
        if body.audio is None:
            raise invalid("audio: required when modalities include 'audio'", "audio")
        speech_format = body.audio["format"]
        if speech_format not in SPEECH_FORMATS:
            raise unsupported("audio.format", f"supported: {', '.join(SPEECH_FORMATS)}")
        if body.stream and speech_format != "pcm16":
            raise unsupported("audio.format", "streamed audio is 'pcm16'")
        voice = body.audio["voice"]
        voice_id = voice.get("id", "") if isinstance(voice, dict) else voice
        request.speech.enabled = True
        request.speech.voice = media.voice_for(voice_id, voices or set())
    elif body.audio is not None:
        raise invalid("audio: set modalities to ['text', 'audio'] to get speech", "modalities")
    return Plan(body, capability, request, speech_format)


_PATHS = [
    (re.compile(r"\.image(\.\w+)?$"), ".image_url"),
    (re.compile(r"\.audio(\.\w+)?$"), ".input_audio"),
    (re.compile(r"^sampling\.max_new_tokens"), "max_completion_tokens"),
    (re.compile(r"^sampling\.stop"), "stop"),
    (re.compile(r"^sampling\."), ""),
    (re.compile(r"^speech\.voice"), "audio.voice"),
    (re.compile(r"^speech\."), "audio."),
]


param_of = path_rewriter(_PATHS)


def _usage(usage: Any) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=usage.input_tokens,
        completion_tokens=usage.output_tokens,
        total_tokens=usage.total_tokens,
    )


def _completion_id(job_id: str) -> str:
    return f"chatcmpl-{job_id or uuid.uuid4().hex}"


async def _unary(request: Request, state: State, p: Plan) -> Response:
    stub = state.upstreams.stub(p.capability)
    call = stub.Chat(
        p.message,
        metadata=calls.metadata(request),
        timeout=calls.timeout(request, state.settings.request_timeout_s),
    )
    reply = await calls.unary(request, call, param_of)
    job_id = await calls.job_id(call)
    message = ChatCompletionMessage(role="assistant", content=reply.text)
    if p.speech_format is not None and p.capability == "omni":
        wav = reply.audio.data
        data = wav if p.speech_format == "wav" else media.wav_to_pcm16(wav)
        message = ChatCompletionMessage(
            role="assistant",
            content=None,
            audio=ChatCompletionAudio(
                id=f"audio-{job_id}",
                data=media.b64(data),
                expires_at=int(time.time()) + 3600,
                transcript=reply.text,
            ),
        )
    completion = ChatCompletion(
        id=_completion_id(job_id),
        object="chat.completion",
        created=int(time.time()),
        model=p.body.model,
        choices=[Choice(index=0, message=message, finish_reason=FINISH[reply.finish_reason])],
        usage=_usage(reply.usage),
        system_fingerprint=f"seed-{reply.seed}",
    )
    return Response(
        completion.model_dump_json(exclude_none=True),
        media_type="application/json",
        headers={calls.JOB_HEADER: job_id} if job_id else None,
    )


async def _stream(request: Request, state: State, p: Plan) -> Response:
    stub = state.upstreams.stub(p.capability)
    call = stub.StreamChat(
        p.message,
        metadata=calls.metadata(request),
        timeout=calls.timeout(request, state.settings.request_timeout_s),
    )
    try:
        accepted = await calls.first(call, param_of)
    except BaseException:
        call.cancel()
        raise
    include_usage = bool((p.body.stream_options or {}).get("include_usage"))
    base = {
        "id": _completion_id(accepted.job_id),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": p.body.model,
    }
    speech = p.speech_format is not None

    def chunk(delta: ChoiceDelta, finish: str | None = None) -> bytes:
        choice = ChunkChoice(index=0, delta=delta, finish_reason=finish)
        return calls.sse(ChatCompletionChunk(**base, choices=[choice]))

    async def events() -> AsyncIterator[bytes]:
        yield chunk(ChoiceDelta(role="assistant", content="" if not speech else None))
        try:
            while (event := await call.read()) is not grpc.aio.EOF:
                kind = event.WhichOneof("event")
                if kind == "delta":
                    text = event.delta.text
                    if speech:
                        delta = ChoiceDelta(audio=ChoiceDeltaAudio(transcript=text))
                        yield chunk(delta)
                    else:
                        yield chunk(ChoiceDelta(content=text))
                elif kind == "audio":
                    data = media.b64(event.audio.audio.data)
                    yield chunk(ChoiceDelta(audio=ChoiceDeltaAudio(id=base["id"], data=data)))
                elif kind == "completed":
                    done = event.completed
                    yield chunk(ChoiceDelta(), FINISH[done.finish_reason])
                    if include_usage:
                        usage = ChatCompletionChunk(**base, choices=[], usage=_usage(done.usage))
                        yield calls.sse(usage)
                else:  # queue position, heartbeat: keeps proxies and the disconnect check busy
                    yield calls.KEEPALIVE
        except grpc.aio.AioRpcError as exc:
            yield calls.error_event(from_grpc(exc, param_of))
        yield calls.DONE

    return calls.EventStream(events(), on_close=call.cancel, job_id=accepted.job_id)


async def completions(request: Request) -> Response:
    state: State = request.app.state.mmserve
    body: ChatBody = parse(ChatBody, await state.json(request))
    capability = await state.resolve(request, body.model, CHAT_CAPABILITIES)
    if capability is None:
        raise unknown_model(body.model, ENDPOINT)
    voices: set[str] = set()
    if body.audio is not None and capability == "omni":
        served = (await state.models(request)).get("omni")
        voices = set(served.info.synthesis.voices) if served is not None else set()
    p = plan(body, capability, voices)
    if body.stream:
        return await _stream(request, state, p)
    return await _unary(request, state, p)


__all__ = ["ENDPOINT", "OpenAIError", "completions"]
