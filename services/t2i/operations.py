"""mmserve.t2i.v1.ImageGenerationService as operations on the runtime's request pipeline.

A request is validated on the event loop before anything is queued (a bad request never waits
for the device), every bad field named in one reply. The operations that start from an image
(services.t2i.editing_operations) decode it on the CPU pool; the device thread only denoises;
output images and previews are encoded on the CPU pool (services.t2i.rendering).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from PIL import Image

from mmserve.common.v1 import media_pb2
from mmserve.t2i.v1 import t2i_pb2
from services.runtime import errors
from services.runtime.app import ServiceRuntime
from services.runtime.executor import BatchSpec, JobContext
from services.runtime.operations import (
    BatchedOperation,
    CallFacts,
    Inline,
    Operation,
    OperationTable,
    StreamRenderer,
    Usage,
)
from services.t2i import batching
from services.t2i.adapters import AdapterChoice
from services.t2i.config import T2ISettings
from services.t2i.engine import T2IEngine
from services.t2i.rendering import Encoding, Generated, GenerationStream, generation_result
from services.t2i.validation import GenerationPlan, GenerationRequest

_OUTPUT_FORMATS = {
    media_pb2.IMAGE_FORMAT_UNSPECIFIED: ("PNG", media_pb2.IMAGE_FORMAT_PNG),
    media_pb2.IMAGE_FORMAT_PNG: ("PNG", media_pb2.IMAGE_FORMAT_PNG),
    media_pb2.IMAGE_FORMAT_JPEG: ("JPEG", media_pb2.IMAGE_FORMAT_JPEG),
    media_pb2.IMAGE_FORMAT_WEBP: ("WEBP", media_pb2.IMAGE_FORMAT_WEBP),
}
_DEFAULT_QUALITY = 90
_PREVIEW_SIDES = (16, 512)


@dataclass(frozen=True)
class Delivery:
    """How a job's images go back: the output encoding and, for streams, the previews' size."""

    encoding: Encoding
    preview_side: int


@dataclass(frozen=True)
class GenerationJob:
    """A validated request with every default resolved, ready for the device."""

    plan: GenerationPlan
    delivery: Delivery


Parsed = TypeVar("Parsed")


class _Generation(Operation[Parsed, GenerationJob, Generated]):
    """What both generation RPCs share: the device run and the rendering of its images."""

    response_cls: Any
    stream_response_cls: Any

    def __init__(self, runtime: ServiceRuntime) -> None:
        super().__init__(runtime)
        self.engine = runtime.engine_as(T2IEngine)
        self.preview_default = runtime.settings_as(T2ISettings).preview_default_max_side

    def run(self, prepared: GenerationJob, ctx: JobContext) -> Generated:
        return Generated(self.engine.generate(ctx, prepared.plan), prepared.delivery.encoding)

    async def render(self, result: Generated, usage: Usage) -> Any:
        return self.response_cls(result=await generation_result(self.runtime, result, usage))

    def stream_renderer(self, prepared: GenerationJob) -> StreamRenderer[Generated]:
        return GenerationStream(
            self.runtime, self.stream_response_cls, prepared.delivery.preview_side
        )

    # --- parsing ---------------------------------------------------------------------------

    def delivery(
        self,
        params: t2i_pb2.GenerationParams,
        preview: t2i_pb2.PreviewOptions | None,
        problems: errors.Violations,
    ) -> Delivery:
        return Delivery(_encoding(params, problems), self._preview_side(preview, problems))

    def job(
        self,
        request: GenerationRequest,
        delivery: Delivery,
        preview_every: int,
        problems: errors.Violations,
    ) -> GenerationJob:
        """The plan for `request`, or InvalidArgument naming its violations and `problems`."""
        plan = self.engine.plan(request, problems)
        problems.raise_if_any()
        if preview_every and self.engine.previews_available:
            plan = replace(plan, preview_every=preview_every)
        return GenerationJob(plan, delivery)

    def _preview_side(
        self, preview: t2i_pb2.PreviewOptions | None, problems: errors.Violations
    ) -> int:
        if preview is None or preview.max_side == 0:
            return self.preview_default
        low, high = _PREVIEW_SIDES
        if not low <= preview.max_side <= high:
            problems.add("preview.max_side", f"{preview.max_side} is not in [{low}, {high}]")
        return preview.max_side


class TextToImage(
    _Generation[GenerationJob], BatchedOperation[GenerationJob, GenerationJob, Generated]
):
    """TextToImage and StreamTextToImage; queued requests of one shape share a denoising
    batch (services.t2i.batching)."""

    kind = "text_to_image"
    response_cls = t2i_pb2.TextToImageResponse
    stream_response_cls = t2i_pb2.StreamTextToImageResponse

    def batch_spec(self) -> BatchSpec | None:
        settings = self.runtime.settings_as(T2ISettings)
        if settings.max_batch_size <= 1:
            return None
        return BatchSpec(settings.max_batch_size, settings.max_batch_wait_ms)

    def batch_key(self, prepared: GenerationJob) -> Hashable:
        engine = self.engine
        return batching.batch_key(prepared.plan, engine.row_guidance, engine.empty_negative_zeroed)

    def run_batch(
        self, prepared: list[GenerationJob], contexts: list[JobContext]
    ) -> list[Generated | Exception]:
        outputs = self.engine.generate_batch(contexts, [job.plan for job in prepared])
        return [
            output if isinstance(output, Exception) else Generated(output, job.delivery.encoding)
            for output, job in zip(outputs, prepared, strict=True)
        ]

    def parse(self, message: t2i_pb2.TextToImageRequest, call: CallFacts) -> GenerationJob:
        problems = errors.Violations()
        preview = message.preview if call.streaming else None
        delivery = self.delivery(message.params, preview, problems)
        request = _generation_request(message.params)
        return self.job(request, delivery, _preview_every(preview), problems)


class ModelInfo(Inline):
    """GetModelInfo: the shared model facts, the scheduler and the limits in force."""

    async def respond(self, message: Any, context: Any) -> t2i_pb2.GetModelInfoResponse:
        reply = t2i_pb2.GetModelInfoResponse(model_info=self.runtime.model_info())
        engine = self.runtime.engine_as(T2IEngine)
        limits = engine.loaded_limits
        if limits is not None:
            reply.scheduler = engine.scheduler_name
            reply.schedulers.extend(engine.scheduler_names)
            reply.adapters.extend(engine.adapter_names)
            reply.max_adapter_weight = engine.settings.max_adapter_weight
            reply.limits.CopyFrom(
                t2i_pb2.GenerationLimits(
                    size_multiple=limits.size_multiple,
                    min_size=limits.min_size,
                    max_size=limits.max_size,
                    max_pixels=limits.max_pixels,
                    default_width=limits.default_width,
                    default_height=limits.default_height,
                    max_steps=limits.max_steps,
                    default_steps=limits.default_steps,
                    max_images_per_request=limits.max_images_per_request,
                    max_guidance_scale=limits.max_guidance_scale,
                    max_prompt_chars=limits.max_prompt_chars,
                    max_prompt_tokens=limits.max_prompt_tokens,
                    supports_image_to_image=limits.supports_image_to_image,
                    supports_negative_prompt=limits.supports_negative_prompt,
                    supports_inpainting=limits.supports_inpainting,
                    supports_image_editing=limits.supports_image_editing,
                )
            )
        return reply


def operations(runtime: ServiceRuntime) -> OperationTable:
    """The service's table: each RPC and what answers it."""
    # Imported here: those operations build on this module's.
    from services.t2i.editing_operations import EditImage, ImageToImage, InpaintImage

    text_to_image = TextToImage(runtime)
    image_to_image = ImageToImage(runtime)
    inpaint, edit = InpaintImage(runtime), EditImage(runtime)
    return {
        "TextToImage": text_to_image,
        "StreamTextToImage": text_to_image,
        "ImageToImage": image_to_image,
        "StreamImageToImage": image_to_image,
        "InpaintImage": inpaint,
        "StreamInpaintImage": inpaint,
        "EditImage": edit,
        "StreamEditImage": edit,
        "GetModelInfo": ModelInfo(runtime),
    }


def _generation_request(
    params: t2i_pb2.GenerationParams, strength: float | None = None
) -> GenerationRequest:
    return GenerationRequest(
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        width=params.width if params.HasField("width") else None,
        height=params.height if params.HasField("height") else None,
        steps=params.num_inference_steps if params.HasField("num_inference_steps") else None,
        guidance_scale=params.guidance_scale if params.HasField("guidance_scale") else None,
        seed=params.seed if params.HasField("seed") else None,
        num_images=params.num_images if params.HasField("num_images") else None,
        strength=strength,
        adapters=tuple(
            AdapterChoice(
                a.name,
                # float32 on the wire: 0.7 arrives as 0.699999988; keep what the client wrote.
                float(f"{a.weight:.7g}") if a.HasField("weight") else None,
            )
            for a in params.adapters
        ),
        scheduler=params.scheduler,
    )


def _preview_every(preview: t2i_pb2.PreviewOptions | None) -> int:
    return preview.every_n_steps if preview is not None else 0


def _encoding(params: t2i_pb2.GenerationParams, problems: errors.Violations) -> Encoding:
    known = _OUTPUT_FORMATS.get(params.output_format)
    if known is None:
        problems.add("params.output_format", f"unknown image format {params.output_format}")
        known = _OUTPUT_FORMATS[media_pb2.IMAGE_FORMAT_PNG]
    quality = params.output_quality if params.HasField("output_quality") else _DEFAULT_QUALITY
    if not 1 <= quality <= 100:
        problems.add("params.output_quality", f"{quality} is not in [1, 100]")
        quality = _DEFAULT_QUALITY
    return Encoding(known[0], known[1], quality)


def _resize(image: Image.Image, width: int, height: int) -> Image.Image:
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.LANCZOS)
