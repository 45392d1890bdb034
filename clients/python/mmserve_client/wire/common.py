"""Protobuf <-> plain Python for what every capability shares: usage, jobs, model info, the
common stream events, sampling parameters and chat messages. Pure functions, no gRPC calls, so
the sync and asyncio clients use exactly the same code."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypedDict, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message as ProtoMessage

from mmserve.common.v1 import chat_pb2, job_pb2, model_pb2

from ..audio import from_audio_proto
from ..events import Accepted, AudioChunk, Heartbeat, Queued, TextDelta
from ..results import FinishReason, Job, JobState, ModelInfo, ServiceInfo, Usage

E = TypeVar("E", bound=enum.StrEnum)


def enum_value(cls: type[E], wrapper: Any, number: int, prefix: str) -> E:
    """Maps a proto enum number to a StrEnum member; unknown values read as UNSPECIFIED, as the
    contract asks of clients."""
    try:
        name = wrapper.Name(number).removeprefix(prefix).lower()
        return cls(name)
    except ValueError:
        return cls("unspecified")


def usage(message: job_pb2.Usage) -> Usage:
    return Usage(
        input_tokens=message.input_tokens,
        output_tokens=message.output_tokens,
        total_tokens=message.total_tokens,
        queue_seconds=message.queue_seconds,
        run_seconds=message.run_seconds,
        batch_size=message.batch_size,
    )


def job_state(number: int) -> JobState:
    return enum_value(JobState, job_pb2.JobState, number, "JOB_STATE_")


def finish_reason(number: int) -> FinishReason:
    return enum_value(FinishReason, chat_pb2.FinishReason, number, "FINISH_REASON_")


def _time(message: Any, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    return getattr(message, name).ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]


def _code_name(number: int) -> str:
    if number == 0:
        return ""
    return next((c.name for c in grpc.StatusCode if c.value[0] == number), str(number))


def job(message: job_pb2.Job) -> Job:
    return Job(
        job_id=message.job_id,
        kind=message.kind,
        state=job_state(message.state),
        position=message.queue.position,
        queue_length=message.queue.queue_length,
        queue_eta_seconds=message.queue.eta_seconds,
        step=message.progress.step,
        total_steps=message.progress.total_steps,
        elapsed_seconds=message.progress.elapsed_seconds,
        eta_seconds=message.progress.eta_seconds,
        created=_time(message, "create_time"),
        started=_time(message, "start_time"),
        ended=_time(message, "end_time"),
        error_code=_code_name(message.error_code),
        error_message=message.error_message,
    )


def job_response(response: job_pb2.GetJobResponse | job_pb2.CancelJobResponse, _: str) -> Job:
    return job(response.job)


def model_info(message: model_pb2.ModelInfo) -> ModelInfo:
    return ModelInfo(
        family=message.family,
        model_id=message.model_id,
        revision=message.revision,
        architecture=message.architecture,
        dtype=message.dtype,
        device=message.device,
        attention_implementation=message.attention_implementation,
        compiled=message.compiled,
        capabilities=tuple(message.capabilities),
        state=model_pb2.ModelState.Name(message.state).removeprefix("MODEL_STATE_").lower()
        if message.state in model_pb2.ModelState.values()
        else "unspecified",
        load_error=message.load_error,
        load_seconds=message.load_seconds,
        max_queue_size=message.max_queue_size,
        max_batch_size=message.max_batch_size,
        server_version=message.server_version,
        random_weights=message.random_weights,
        notice=message.notice,
    )


def to_plain(message: ProtoMessage) -> dict[str, Any]:
    """A message as a JSON-friendly dict with the proto field names, defaults included."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def service_info(response: Any, _: str = "") -> ServiceInfo:
    """Any capability's GetModelInfoResponse: model_info, limits, and the rest as extras."""
    plain = to_plain(response)
    plain.pop("model_info", None)
    limits = plain.pop("limits", {})
    return ServiceInfo(model=model_info(response.model_info), limits=limits, extras=plain)


def shared_event(response: Any) -> Accepted | Queued | Heartbeat | None:
    """The events every job stream shares (`accepted`, `queue`, `heartbeat`), else None."""
    kind = response.WhichOneof("event")
    job_id = response.job_id
    if kind == "accepted":
        queue = response.accepted.queue
        return Accepted(
            response.accepted.job_id or job_id,
            queue.position,
            queue.queue_length,
            queue.eta_seconds,
        )
    if kind == "queue":
        return queued(job_id, response.queue)
    if kind == "heartbeat":
        return heartbeat(job_id, response.heartbeat)
    return None


def queued(job_id: str, queue: job_pb2.QueueStatus) -> Queued:
    return Queued(job_id, queue.position, queue.queue_length, queue.eta_seconds)


def heartbeat(job_id: str, beat: job_pb2.Heartbeat) -> Heartbeat:
    return Heartbeat(job_id, job_state(beat.state), beat.elapsed_seconds)


def text_delta(job_id: str, delta: chat_pb2.TextDelta) -> TextDelta:
    return TextDelta(job_id, delta.text, delta.output_tokens)


def audio_chunk(job_id: str, chunk: Any) -> AudioChunk:
    return AudioChunk(job_id, from_audio_proto(chunk.audio), chunk.index)


# --- sampling and chat messages (vl and omni) ---


class SamplingOptions(TypedDict, total=False):
    """Decoding parameters; unset ones take the model's and the service's defaults."""

    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    seed: int
    stop: Sequence[str]


def sampling(options: Mapping[str, Any]) -> chat_pb2.SamplingParams:
    params = chat_pb2.SamplingParams()
    for name in ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed"):
        value = options.get(name)
        if value is not None:
            setattr(params, name, value)
    params.stop.extend(options.get("stop") or ())
    return params


ROLES = {
    "system": chat_pb2.ROLE_SYSTEM,
    "user": chat_pb2.ROLE_USER,
    "assistant": chat_pb2.ROLE_ASSISTANT,
}


@dataclass(frozen=True)
class Message:
    """One chat message: a role ("system", "user", "assistant") and ordered parts. A `str` part
    is text; anything else is media (image, or audio for omni: an AudioClip, a (samples, rate)
    tuple, or a WAV/FLAC/OGG/MP3 file or bytes)."""

    role: str
    content: Sequence[Any] = field(default_factory=tuple)

    @classmethod
    def system(cls, text: str) -> Message:
        return cls("system", (text,))

    @classmethod
    def user(cls, *parts: Any) -> Message:
        return cls("user", parts)

    @classmethod
    def assistant(cls, text: str) -> Message:
        return cls("assistant", (text,))


MessageLike = Message | Mapping[str, Any]


def as_message(message: MessageLike) -> Message:
    """A Message, or a dict {"role": ..., "content": "text" or [parts]}."""
    if isinstance(message, Message):
        return message
    content = message.get("content", ())
    if isinstance(content, str):
        content = (content,)
    return Message(str(message.get("role", "user")), tuple(content))


def conversation(
    messages: str | Sequence[MessageLike],
    media: Sequence[Any] = (),
    system: str | None = None,
) -> list[Message]:
    """A whole conversation, or a prompt with media for one user turn (media before the text,
    as vision-language models are usually prompted)."""
    if isinstance(messages, str):
        turns = [Message.user(*media, messages)]
    else:
        turns = [as_message(m) for m in messages]
        if media:
            raise ValueError("pass media inside the messages when giving a conversation")
    if system is not None:
        turns.insert(0, Message.system(system))
    return turns


def chat_messages(
    messages: Sequence[Message],
    message_cls: type[ProtoMessage],
    part: Callable[[Any], ProtoMessage],
) -> list[ProtoMessage]:
    """The request's repeated ChatMessage, with `part` turning each content item into the
    capability's ContentPart."""
    built = []
    for message in messages:
        role = ROLES.get(message.role.lower())
        if role is None:
            raise ValueError(f"unknown role {message.role!r}; use system, user or assistant")
        built.append(message_cls(role=role, content=[part(item) for item in message.content]))
    return built
