"""Vision-language chat requests and results (mmserve.vl.v1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mmserve.vl.v1 import vl_pb2

from ..events import ChatEvent, Completed
from ..images import ImageLike, to_image_proto
from ..results import ChatReply
from .common import (
    MessageLike,
    chat_messages,
    conversation,
    finish_reason,
    sampling,
    shared_event,
    text_delta,
    usage,
)


def content_part(item: Any) -> vl_pb2.ContentPart:
    """A `str` is text; anything else is an image."""
    if isinstance(item, vl_pb2.ContentPart):
        return item
    if isinstance(item, str):
        return vl_pb2.ContentPart(text=item)
    return vl_pb2.ContentPart(image=to_image_proto(item))


def chat_request(
    messages: str | Sequence[MessageLike],
    images: Sequence[ImageLike] = (),
    system: str | None = None,
    min_pixels: int = 0,
    max_pixels: int = 0,
    options: Mapping[str, Any] | None = None,
) -> vl_pb2.ChatRequest:
    turns = conversation(messages, images, system)
    return vl_pb2.ChatRequest(
        messages=chat_messages(turns, vl_pb2.ChatMessage, content_part),  # type: ignore[arg-type]
        sampling=sampling(options or {}),
        image_resolution=vl_pb2.ImageResolution(min_pixels=min_pixels, max_pixels=max_pixels),
    )


def chat_response(response: vl_pb2.ChatResponse, job_id: str) -> ChatReply:
    return ChatReply(
        job_id=job_id,
        text=response.text,
        finish_reason=finish_reason(response.finish_reason),
        usage=usage(response.usage),
        seed=response.seed,
    )


def chat_event(response: vl_pb2.StreamChatResponse) -> ChatEvent | None:
    shared = shared_event(response)
    if shared is not None:
        return shared
    kind = response.WhichOneof("event")
    if kind == "delta":
        return text_delta(response.job_id, response.delta)
    if kind == "completed":
        done = response.completed
        return Completed(
            response.job_id, finish_reason(done.finish_reason), usage(done.usage), done.seed
        )
    return None
