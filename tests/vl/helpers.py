"""Request builders, error-detail decoding and the in-process reference for the vl tests."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch
from google.rpc import error_details_pb2, status_pb2
from PIL import Image
from transformers import AutoModelForImageTextToText

from mmserve.common.v1 import chat_pb2, media_pb2
from mmserve.vl.v1 import vl_pb2, vl_pb2_grpc
from services.vl.config import QWEN_DEFAULT_MAX_PIXELS, QWEN_MIN_PIXELS
from services.vl.processor import load_processor

SYSTEM, USER, ASSISTANT = chat_pb2.ROLE_SYSTEM, chat_pb2.ROLE_USER, chat_pb2.ROLE_ASSISTANT
_ROLE_NAMES = {SYSTEM: "system", USER: "user", ASSISTANT: "assistant"}
# The service's default image resolution, which the reference must use too.
DEFAULT_SIZE = {"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": QWEN_DEFAULT_MAX_PIXELS}


def picture(width: int, height: int, seed: int) -> Image.Image:
    """A noise image: different seeds give images a random model tells apart."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def text(value: str) -> vl_pb2.ContentPart:
    return vl_pb2.ContentPart(text=value)


def image(value: Image.Image | bytes) -> vl_pb2.ContentPart:
    data = value if isinstance(value, bytes) else png(value)
    return vl_pb2.ContentPart(image=media_pb2.Image(data=data))


def message(role: int, *parts: vl_pb2.ContentPart) -> vl_pb2.ChatMessage:
    return vl_pb2.ChatMessage(role=role, content=list(parts))  # type: ignore[arg-type]


def request(
    *messages: vl_pb2.ChatMessage,
    resolution: vl_pb2.ImageResolution | None = None,
    **sampling: Any,
) -> vl_pb2.ChatRequest:
    return vl_pb2.ChatRequest(
        messages=list(messages),
        sampling=chat_pb2.SamplingParams(**sampling),
        image_resolution=resolution,
    )


def template_messages(chat: vl_pb2.ChatRequest) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    """The chat as a transformers user writes it, and its images in order."""
    messages: list[dict[str, Any]] = []
    images: list[Image.Image] = []
    for entry in chat.messages:
        content: list[dict[str, Any]] = []
        for part in entry.content:
            if part.WhichOneof("part") == "text":
                content.append({"type": "text", "text": part.text})
            else:
                content.append({"type": "image"})
                images.append(Image.open(io.BytesIO(part.image.data)).convert("RGB"))
        messages.append({"role": _ROLE_NAMES[entry.role], "content": content})
    return messages, images


@dataclass
class Reference:
    """The model folder loaded with plain transformers: what a user would run in-process."""

    model: Any
    processor: Any
    size: dict[str, int] | None  # the service's default image resolution, for Qwen processors

    @classmethod
    def load(cls, folder: Path, model_type: str) -> Reference:
        model = AutoModelForImageTextToText.from_pretrained(folder).eval()
        size = DEFAULT_SIZE if model_type in ("qwen2_5_vl", "qwen2_vl") else None
        return cls(model, load_processor(folder, model_type), size)

    def inputs(self, chat: vl_pb2.ChatRequest, size: dict[str, int] | None = None) -> Any:
        messages, images = template_messages(chat)
        prompt = self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        size = size or self.size
        return self.processor(
            text=[prompt],
            images=images or None,
            return_tensors="pt",
            **({"size": size} if size else {}),
        )

    def greedy(self, chat: vl_pb2.ChatRequest, max_new_tokens: int) -> tuple[str, int]:
        """(answer, generated token count) of greedy generate for the chat."""
        inputs = self.inputs(chat)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1] :]
        answer = self.processor.batch_decode(new[None], skip_special_tokens=True)[0]
        return answer, int(new.shape[0])


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """field -> description of the BadRequest detail a client receives."""
    found: dict[str, str] = {}
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        for detail in status_pb2.Status.FromString(value).details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                found.update({v.field: v.description for v in bad.field_violations})
    return found


async def collect(
    stream: AsyncIterator[vl_pb2.StreamChatResponse],
) -> list[vl_pb2.StreamChatResponse]:
    return [event async for event in stream]


def stream_text(events: Sequence[vl_pb2.StreamChatResponse]) -> str:
    return "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")


def stub(channel: grpc.aio.Channel) -> vl_pb2_grpc.VisionLanguageServiceStub:
    return vl_pb2_grpc.VisionLanguageServiceStub(channel)
