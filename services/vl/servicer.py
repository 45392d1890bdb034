"""mmserve.vl.v1.VisionLanguageService: protobuf in and out, the engine through the runtime.

Request checks and image decoding happen here, before a job is queued (bad requests never take
a queue slot); decoding and preprocessing run in the runtime's CPU pool, generation on the
device thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import AsyncIterator
from typing import Any

from PIL import Image

from mmserve.common.v1 import chat_pb2, media_pb2
from mmserve.vl.v1 import vl_pb2, vl_pb2_grpc
from services.runtime import job_protos
from services.runtime.app import JobsServicerMixin, ServiceRuntime, fill_job_event
from services.runtime.errors import JobCancelled
from services.runtime.executor import JobFinished, JobOutput, JobUsage
from services.runtime.images import ImageLimits
from services.runtime.media import UriPolicy, load_image
from services.vl.chat import ChatLimits, ChatOutput, FinishReason, TextDelta
from services.vl.engine import CHAT_KIND, PreparedChat, VLEngine
from services.vl.requests import check_request, image_fields, to_chat

FINISH_REASONS = {
    FinishReason.STOP: chat_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: chat_pb2.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: chat_pb2.FINISH_REASON_CANCELLED,
}


class VisionLanguageServicer(JobsServicerMixin, vl_pb2_grpc.VisionLanguageServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        assert isinstance(runtime.engine, VLEngine)
        self.engine: VLEngine = runtime.engine
        settings = runtime.settings
        self._uri_policy = UriPolicy(tuple(settings.allowed_uri_prefixes))
        self._image_limits = ImageLimits(
            max_pixels=settings.max_image_pixels,
            max_side=settings.max_image_side,
            max_bytes=settings.max_message_mb * 1024 * 1024,
        )

    # --- shared steps ----------------------------------------------------------------------

    async def _prepare(self, request: vl_pb2.ChatRequest) -> PreparedChat:
        """Checks, decodes the images (in parallel, CPU pool) and tokenizes (CPU pool)."""
        self.runtime.ensure_ready()
        check_request(request, self.engine.limits())
        fields = image_fields(request)
        if len(fields) <= 1:
            # One hop to the pool, not two: each hop costs the time to first token a wake-up.
            return await self.runtime.run_cpu(self._decode_and_prepare, request, fields)
        images = await asyncio.gather(
            *(self.runtime.run_cpu(self._load_image, image, field) for field, image in fields)
        )
        return await self.runtime.run_cpu(self.engine.prepare, to_chat(request, images))

    def _decode_and_prepare(
        self, request: vl_pb2.ChatRequest, fields: list[tuple[str, media_pb2.Image]]
    ) -> PreparedChat:
        images = [self._load_image(image, field) for field, image in fields]
        return self.engine.prepare(to_chat(request, images))

    def _load_image(self, image: media_pb2.Image, field: str) -> Image.Image:
        return load_image(image, field=field, policy=self._uri_policy, limits=self._image_limits)

    @staticmethod
    def _usage(output: ChatOutput, usage: JobUsage) -> Any:
        return job_protos.usage(
            usage, input_tokens=output.input_tokens, output_tokens=output.output_tokens
        )

    # --- RPCs ------------------------------------------------------------------------------

    async def Chat(self, request: vl_pb2.ChatRequest, context: Any) -> vl_pb2.ChatResponse:
        prepared = await self._prepare(request)
        if self.engine.settings.batching:
            output, usage = await self.runtime.run_job(
                context, CHAT_KIND, batch_input=prepared, batch_key=prepared.batch_key
            )
        else:
            work = functools.partial(self.engine.generate, prepared, stream=False)
            output, usage = await self.runtime.run_job(context, CHAT_KIND, work)
        return vl_pb2.ChatResponse(
            text=output.text,
            finish_reason=FINISH_REASONS[output.finish_reason],
            usage=self._usage(output, usage),
            seed=output.seed,
        )

    async def StreamChat(
        self, request: vl_pb2.ChatRequest, context: Any
    ) -> AsyncIterator[vl_pb2.StreamChatResponse]:
        prepared = await self._prepare(request)
        if self.engine.settings.batching:
            prepared = dataclasses.replace(prepared, stream=True)
            events = self.runtime.stream_job(
                context, CHAT_KIND, batch_input=prepared, batch_key=prepared.batch_key
            )
        else:
            work = functools.partial(self.engine.generate, prepared, stream=True)
            events = self.runtime.stream_job(context, CHAT_KIND, work)
        job_id = ""
        output_tokens = 0
        try:
            async for job_id, event in events:
                reply = vl_pb2.StreamChatResponse()
                if fill_job_event(reply, job_id, event):
                    pass
                elif isinstance(event, JobOutput) and isinstance(event.payload, TextDelta):
                    output_tokens = event.payload.output_tokens
                    reply.delta.text = event.payload.text
                    reply.delta.output_tokens = output_tokens
                elif isinstance(event, JobFinished):
                    output: ChatOutput = event.result
                    reply.completed.finish_reason = FINISH_REASONS[output.finish_reason]
                    reply.completed.usage.CopyFrom(self._usage(output, event.usage))
                    reply.completed.seed = output.seed
                else:
                    continue  # progress: GetJob reports it; the deltas carry token counts
                yield reply
        except JobCancelled:
            # CancelJob from another connection: this client is still listening, so it learns
            # how far the answer got before the stream ends with CANCELLED.
            if job_id:
                yield self._cancelled_event(job_id, prepared, output_tokens)
            raise

    def _cancelled_event(
        self, job_id: str, prepared: PreparedChat, output_tokens: int
    ) -> vl_pb2.StreamChatResponse:
        snapshot = self.runtime.executor.get(job_id)
        usage = JobUsage(snapshot.queue_seconds, snapshot.run_seconds, snapshot.batch_size)
        reply = vl_pb2.StreamChatResponse(job_id=job_id)
        reply.completed.finish_reason = chat_pb2.FINISH_REASON_CANCELLED
        reply.completed.usage.CopyFrom(
            job_protos.usage(usage, input_tokens=prepared.input_tokens, output_tokens=output_tokens)
        )
        reply.completed.seed = prepared.plan.seed
        return reply

    async def GetModelInfo(
        self, request: vl_pb2.GetModelInfoRequest, context: Any
    ) -> vl_pb2.GetModelInfoResponse:
        return vl_pb2.GetModelInfoResponse(
            model_info=self.runtime.model_info(), limits=limits_proto(self.engine.limits())
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
