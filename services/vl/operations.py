"""mmserve.vl.v1.VisionLanguageService as operations: Chat and StreamChat are one chat
operation, GetModelInfo is answered inline. With settings.batching on (the default), chats
decode together: each joins the running decode batch at its next token and leaves it when done
(services.runtime.chat.continuous); a model whose cache cannot be merged falls back to
micro-batches of queued requests, and with batching off each runs alone.

Request checks happen on the loop before a job is queued (bad requests never take a queue
slot); image decoding, the chat template, tokenization and image preprocessing run in one
`prepare` on the runtime's CPU pool, generation on the device thread.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from PIL import Image

from mmserve.common.v1 import media_pb2
from mmserve.vl.v1 import vl_pb2
from services.runtime import job_protos
from services.runtime.app import ServiceRuntime
from services.runtime.chat.continuous import DecodeLoop
from services.runtime.chat.messages import ChatOutput
from services.runtime.chat.protos import finish_reason_proto
from services.runtime.chat.stream import ChatStreamRenderer
from services.runtime.executor import BatchSpec, JobContext, JoinSession, JoinSpec
from services.runtime.operations import (
    BatchedOperation,
    CallFacts,
    Inline,
    OperationTable,
    Usage,
)
from services.vl.chat import ChatLimits
from services.vl.config import VLSettings
from services.vl.engine import CHAT_KIND, PreparedChat, VLEngine
from services.vl.requests import check_request, image_fields, to_chat


@dataclass(frozen=True)
class ChatCall:
    """A checked ChatRequest, its images still encoded (decoding is the CPU pool's work)."""

    message: vl_pb2.ChatRequest
    images: list[tuple[str, media_pb2.Image]]  # (field path, image) in message order
    stream: bool


class Chat(BatchedOperation[ChatCall, PreparedChat, ChatOutput]):
    """Chat and StreamChat; each row of a batch streams or not as its call does."""

    kind = CHAT_KIND

    def __init__(self, runtime: ServiceRuntime) -> None:
        super().__init__(runtime)
        self.engine = runtime.engine_as(VLEngine)
        self.settings = runtime.settings_as(VLSettings)

    def parse(self, message: vl_pb2.ChatRequest, call: CallFacts) -> ChatCall:
        check_request(message, self.engine.limits())
        return ChatCall(message, image_fields(message), stream=call.streaming)

    def prepare(self, request: ChatCall) -> PreparedChat:
        # Decoding and preparing in this one call costs the time to first token one pool
        # hop, not two (a wake-up each).
        images = self._decode(request.images)
        prepared = self.engine.prepare(to_chat(request.message, images))
        return dataclasses.replace(prepared, stream=request.stream)

    def _load(self, image: media_pb2.Image, field: str) -> Image.Image:
        # The elongation limit is the engine's (VLEngine._check_images): only processors that
        # resize by total pixels refuse such images, and the refusal names the image itself.
        return self.runtime.load_image(image, field, max_aspect_ratio=None)

    def _decode(self, fields: list[tuple[str, media_pb2.Image]]) -> list[Image.Image]:
        """Decodes the images, in parallel on the CPU pool when there are several. This thread
        decodes the first and takes back any image no other worker has started, so a busy
        (or one-worker) pool never leaves it waiting."""
        if len(fields) <= 1:
            return [self._load(image, field) for field, image in fields]
        pool = self.runtime.cpu_pool
        rest: list[Future[Image.Image]] = [
            pool.submit(self._load, image, field) for field, image in fields[1:]
        ]
        try:
            field, image = fields[0]
            images = [self._load(image, field)]
            for future, (field, image) in zip(rest, fields[1:], strict=True):
                if future.cancel():
                    images.append(self._load(image, field))
                else:
                    images.append(future.result())
            return images
        finally:
            for future in rest:
                future.cancel()

    def join_spec(self) -> JoinSpec | None:
        if not (self.settings.batching and self.engine.joinable):
            return None
        return JoinSpec(self.settings.batch_max_size)

    def run_joined(self, session: JoinSession) -> None:
        DecodeLoop(self.engine.decoder(), self.settings.batch_prefill_tokens).run(session)

    def batch_spec(self) -> BatchSpec | None:
        if not self.settings.batching:
            return None
        return BatchSpec(self.settings.batch_max_size, self.settings.batch_max_wait_ms)

    def batch_key(self, prepared: PreparedChat) -> Hashable:
        return prepared.batch_key

    def run_batch(self, prepared: list[PreparedChat], contexts: list[JobContext]) -> list[Any]:
        # A row's Exception (its cancel, or a row that could not be stacked and failed alone)
        # fails only its caller.
        return list(self.engine.generate_batch(prepared, contexts))

    def run(self, prepared: PreparedChat, ctx: JobContext) -> ChatOutput:
        return self.engine.generate(prepared, ctx)

    async def render(self, result: ChatOutput, usage: Usage) -> vl_pb2.ChatResponse:
        return vl_pb2.ChatResponse(
            text=result.text,
            finish_reason=finish_reason_proto(result.finish_reason),
            usage=job_protos.usage(
                usage, input_tokens=result.input_tokens, output_tokens=result.output_tokens
            ),
            seed=result.seed,
        )

    def stream_renderer(
        self, prepared: PreparedChat
    ) -> ChatStreamRenderer[vl_pb2.StreamChatResponse]:
        return ChatStreamRenderer(
            vl_pb2.StreamChatResponse,
            seed=prepared.plan.seed,
            input_tokens=prepared.input_tokens,
        )


class ModelInfo(Inline):
    async def respond(self, message: Any, context: Any) -> vl_pb2.GetModelInfoResponse:
        limits = self.runtime.engine_as(VLEngine).limits()
        return vl_pb2.GetModelInfoResponse(
            model_info=self.runtime.model_info(), limits=limits_proto(limits)
        )


def limits_proto(limits: ChatLimits) -> vl_pb2.ChatLimits:
    return vl_pb2.ChatLimits(
        max_context_tokens=limits.max_context_tokens,
        max_new_tokens=limits.max_new_tokens,
        max_messages=limits.max_messages,
        max_images=limits.max_images,
        default_image_resolution=vl_pb2.ImageResolution(
            min_pixels=limits.default_min_pixels, max_pixels=limits.default_max_pixels
        ),
        min_image_pixels=limits.min_pixels,
        max_image_pixels=limits.max_pixels,
    )


def operations(runtime: ServiceRuntime) -> OperationTable:
    chat = Chat(runtime)
    return {"Chat": chat, "StreamChat": chat, "GetModelInfo": ModelInfo(runtime)}
