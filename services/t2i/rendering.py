"""Generation results as protobuf: output images and step previews, encoded on the CPU pool.

Encoding a PNG or a JPEG of a large image takes longer than a denoising step of a small model,
so none of it runs on the event loop or the device thread: renderers await the runtime's CPU
pool for every image.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from PIL import Image

from mmserve.common.v1 import media_pb2
from mmserve.t2i.v1 import t2i_pb2
from services.runtime import job_protos
from services.runtime.app import ServiceRuntime
from services.runtime.executor import JobProgress
from services.runtime.images import encode_image
from services.runtime.operations import StreamRenderer, Usage
from services.t2i.engine import GenerationOutput, PreviewFrame

Reply = TypeVar("Reply", t2i_pb2.StreamTextToImageResponse, t2i_pb2.StreamImageToImageResponse)


@dataclass(frozen=True)
class Encoding:
    """How a request wants its images: the PIL format, its proto name and the quality."""

    pil_format: str
    proto_format: media_pb2.ImageFormat.ValueType
    quality: int


@dataclass(frozen=True)
class Generated:
    """A finished job with what rendering it needs: the request's encoding."""

    output: GenerationOutput
    encoding: Encoding


async def generation_result(
    runtime: ServiceRuntime, generated: Generated, usage: Usage
) -> t2i_pb2.GenerationResult:
    output, encoding = generated.output, generated.encoding
    encoded = await asyncio.gather(
        *(runtime.run_cpu(encoded_image, image, encoding) for image in output.images)
    )
    return t2i_pb2.GenerationResult(
        images=encoded,
        seed=output.seed,
        prompt_truncated=output.prompt_truncated,
        steps=output.steps,
        usage=job_protos.usage(usage, input_tokens=output.prompt_tokens),
    )


class GenerationStream(StreamRenderer[Generated], Generic[Reply]):
    """One stream's step events: a preview carries its step's progress, and the progress event
    of that step that follows it is not sent again; then the result."""

    def __init__(self, runtime: ServiceRuntime, reply_cls: type[Reply], preview_side: int) -> None:
        self.runtime = runtime
        self.reply_cls = reply_cls
        self.preview_side = preview_side
        self.last_step = 0

    async def output(self, payload: Any) -> Reply | None:
        if not isinstance(payload, PreviewFrame):
            return None
        preview = await self.runtime.run_cpu(preview_image, payload, self.preview_side)
        reply = self.reply_cls()
        reply.step.progress.CopyFrom(job_protos.progress(payload))
        reply.step.preview.CopyFrom(preview)
        self.last_step = payload.step
        return reply

    async def progress(self, event: JobProgress) -> Reply | None:
        if event.step <= self.last_step:  # already sent with its preview
            return None
        self.last_step = event.step
        reply = self.reply_cls()
        reply.step.progress.CopyFrom(job_protos.progress(event))
        return reply

    async def done(self, result: Generated, usage: Usage) -> Reply:
        reply = self.reply_cls()
        reply.result.CopyFrom(await generation_result(self.runtime, result, usage))
        return reply


def encoded_image(image: Image.Image, encoding: Encoding) -> media_pb2.Image:
    return media_pb2.Image(
        data=encode_image(image, encoding.pil_format, encoding.quality),
        format=encoding.proto_format,
        width=image.width,
        height=image.height,
    )


def preview_image(frame: PreviewFrame, max_side: int) -> media_pb2.Image:
    """The preview scaled so its longer side is `max_side`, as PNG."""
    image = Image.fromarray(frame.rgb, "RGB")
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return media_pb2.Image(
        data=encode_image(image, "PNG"),
        format=media_pb2.IMAGE_FORMAT_PNG,
        width=image.width,
        height=image.height,
    )
