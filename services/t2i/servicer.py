"""mmserve.t2i.v1.ImageGenerationService: protobuf in, engine jobs, protobuf out.

Requests are validated before they are queued (a bad request never waits for the device);
input images are decoded, and output images and previews encoded, in the runtime's CPU pool,
never on the device thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import grpc
from PIL import Image

from mmserve.common.v1 import job_pb2, media_pb2
from mmserve.t2i.v1 import t2i_pb2, t2i_pb2_grpc
from services.runtime import errors, job_protos
from services.runtime.app import JobsServicerMixin, ServiceRuntime, fill_job_event
from services.runtime.executor import JobContext, JobFinished, JobOutput, JobProgress, JobUsage
from services.runtime.images import ImageLimits, encode_image
from services.runtime.media import UriPolicy, load_image
from services.t2i.engine import GenerationOutput, PreviewFrame, T2IEngine
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
class _Encoding:
    pil_format: str
    proto_format: media_pb2.ImageFormat.ValueType
    quality: int


@dataclass(frozen=True)
class _Job:
    """A validated request, ready to submit."""

    plan: GenerationPlan
    encoding: _Encoding
    preview_side: int


class T2IServicer(JobsServicerMixin, t2i_pb2_grpc.ImageGenerationServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        engine = runtime.engine
        if not isinstance(engine, T2IEngine):
            raise TypeError("the t2i servicer needs a T2IEngine")
        self.engine = engine
        settings = runtime.settings
        self._image_limits = ImageLimits(
            max_pixels=settings.max_image_pixels,
            max_side=settings.max_image_side,
            max_bytes=settings.max_message_mb * 1024 * 1024,
        )
        self._uri_policy = UriPolicy(tuple(settings.allowed_uri_prefixes))
        self._preview_default = int(getattr(settings, "preview_default_max_side", 128))

    # --- RPCs -------------------------------------------------------------------------------

    async def TextToImage(
        self, request: t2i_pb2.TextToImageRequest, context: grpc.aio.ServicerContext
    ) -> t2i_pb2.TextToImageResponse:
        job = self._prepare(request.params, None, None, None)
        output, usage = await self.runtime.run_job(context, "text_to_image", self._work(job))
        return t2i_pb2.TextToImageResponse(result=await self._result(output, usage, job))

    async def StreamTextToImage(
        self, request: t2i_pb2.TextToImageRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[t2i_pb2.StreamTextToImageResponse]:
        job = self._prepare(request.params, request.preview, None, None)
        async for reply in self._stream(
            context, "text_to_image", job, t2i_pb2.StreamTextToImageResponse
        ):
            yield reply

    async def ImageToImage(
        self, request: t2i_pb2.ImageToImageRequest, context: grpc.aio.ServicerContext
    ) -> t2i_pb2.ImageToImageResponse:
        job = await self._prepare_image_to_image(request, streaming=False)
        output, usage = await self.runtime.run_job(context, "image_to_image", self._work(job))
        return t2i_pb2.ImageToImageResponse(result=await self._result(output, usage, job))

    async def StreamImageToImage(
        self, request: t2i_pb2.ImageToImageRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[t2i_pb2.StreamImageToImageResponse]:
        job = await self._prepare_image_to_image(request, streaming=True)
        async for reply in self._stream(
            context, "image_to_image", job, t2i_pb2.StreamImageToImageResponse
        ):
            yield reply

    async def GetModelInfo(
        self, request: t2i_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> t2i_pb2.GetModelInfoResponse:
        reply = t2i_pb2.GetModelInfoResponse(model_info=self.runtime.model_info())
        limits = self.engine.loaded_limits
        if limits is not None:
            reply.scheduler = self.engine.scheduler_name
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
                )
            )
        return reply

    # --- requests -> jobs -------------------------------------------------------------------

    def _prepare(
        self,
        params: t2i_pb2.GenerationParams,
        preview: t2i_pb2.PreviewOptions | None,
        input_size: tuple[int, int] | None,
        strength: float | None,
    ) -> _Job:
        """Validates everything (all problems reported together) and resolves defaults."""
        self.runtime.ensure_ready()
        problems: list[errors.FieldViolation] = []
        encoding = _encoding(params, problems)
        preview_side = self._preview_side(preview, problems)
        request = GenerationRequest(
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            width=params.width if params.HasField("width") else None,
            height=params.height if params.HasField("height") else None,
            steps=params.num_inference_steps if params.HasField("num_inference_steps") else None,
            guidance_scale=params.guidance_scale if params.HasField("guidance_scale") else None,
            seed=params.seed if params.HasField("seed") else None,
            num_images=params.num_images if params.HasField("num_images") else None,
            input_size=input_size,
            strength=strength,
        )
        try:
            plan = self.engine.plan(request)
        except errors.InvalidArgument as exc:
            problems.extend(exc.violations)
            plan = None
        if problems or plan is None:
            summary = "; ".join(f"{p.field}: {p.description}" for p in problems)
            raise errors.InvalidArgument(f"invalid request: {summary}", problems)
        every = preview.every_n_steps if preview is not None else 0
        if every and self.engine.previews_available:
            plan = replace(plan, preview_every=every)
        return _Job(plan, encoding, preview_side)

    async def _prepare_image_to_image(
        self, request: t2i_pb2.ImageToImageRequest, *, streaming: bool
    ) -> _Job:
        self.runtime.ensure_ready()
        if not self.engine.limits.supports_image_to_image:
            # Before decoding anything: the answer does not depend on the image.
            raise errors.Unimplemented(
                f"the loaded {self.engine.info().family} pipeline has no image-to-image variant"
            )
        if not request.HasField("image"):
            raise errors.InvalidArgument.for_field("image", "required")
        image = await self.runtime.run_cpu(self._decode, request.image)
        strength = request.strength if request.HasField("strength") else None
        job = self._prepare(
            request.params, request.preview if streaming else None, image.size, strength
        )
        resized = await self.runtime.run_cpu(_resize, image, job.plan.width, job.plan.height)
        return replace(job, plan=replace(job.plan, image=resized))

    def _decode(self, image: media_pb2.Image) -> Image.Image:
        return load_image(image, field="image", policy=self._uri_policy, limits=self._image_limits)

    def _preview_side(
        self, preview: t2i_pb2.PreviewOptions | None, problems: list[errors.FieldViolation]
    ) -> int:
        if preview is None or preview.max_side == 0:
            return self._preview_default
        low, high = _PREVIEW_SIDES
        if not low <= preview.max_side <= high:
            problems.append(
                errors.FieldViolation(
                    "preview.max_side", f"{preview.max_side} is not in [{low}, {high}]"
                )
            )
        return preview.max_side

    def _work(self, job: _Job) -> Callable[[JobContext], GenerationOutput]:
        engine, plan = self.engine, job.plan
        return lambda ctx: engine.generate(ctx, plan)

    # --- jobs -> protobuf -------------------------------------------------------------------

    async def _stream(
        self, context: grpc.aio.ServicerContext, kind: str, job: _Job, reply_cls: Any
    ) -> AsyncIterator[Any]:
        last_step = 0
        async for job_id, event in self.runtime.stream_job(context, kind, self._work(job)):
            reply = reply_cls()
            if fill_job_event(reply, job_id, event):
                yield reply
                continue
            if isinstance(event, JobOutput) and isinstance(event.payload, PreviewFrame):
                frame = event.payload
                preview = await self.runtime.run_cpu(_preview_image, frame, job.preview_side)
                reply.step.progress.CopyFrom(
                    job_pb2.Progress(
                        step=frame.step,
                        total_steps=frame.total,
                        elapsed_seconds=frame.elapsed_seconds,
                        eta_seconds=frame.eta_seconds,
                    )
                )
                reply.step.preview.CopyFrom(preview)
                last_step = frame.step
            elif isinstance(event, JobProgress):
                if event.step <= last_step:  # already sent with its preview
                    continue
                last_step = event.step
                reply.step.progress.CopyFrom(job_protos.progress(event))
            elif isinstance(event, JobFinished):
                reply.result.CopyFrom(await self._result(event.result, event.usage, job))
            else:
                continue
            yield reply

    async def _result(
        self, output: GenerationOutput, usage: JobUsage, job: _Job
    ) -> t2i_pb2.GenerationResult:
        encoding = job.encoding
        encoded = await asyncio.gather(
            *(self.runtime.run_cpu(_encoded_image, image, encoding) for image in output.images)
        )
        return t2i_pb2.GenerationResult(
            images=encoded,
            seed=output.seed,
            prompt_truncated=output.prompt_truncated,
            steps=output.steps,
            usage=job_protos.usage(usage, input_tokens=output.prompt_tokens),
        )


def _encoding(params: t2i_pb2.GenerationParams, problems: list[errors.FieldViolation]) -> _Encoding:
    known = _OUTPUT_FORMATS.get(params.output_format)
    if known is None:
        problems.append(
            errors.FieldViolation(
                "params.output_format", f"unknown image format {params.output_format}"
            )
        )
        known = _OUTPUT_FORMATS[media_pb2.IMAGE_FORMAT_PNG]
    quality = params.output_quality if params.HasField("output_quality") else _DEFAULT_QUALITY
    if not 1 <= quality <= 100:
        problems.append(
            errors.FieldViolation("params.output_quality", f"{quality} is not in [1, 100]")
        )
        quality = _DEFAULT_QUALITY
    return _Encoding(known[0], known[1], quality)


def _encoded_image(image: Image.Image, encoding: _Encoding) -> media_pb2.Image:
    return media_pb2.Image(
        data=encode_image(image, encoding.pil_format, encoding.quality),
        format=encoding.proto_format,
        width=image.width,
        height=image.height,
    )


def _preview_image(frame: PreviewFrame, max_side: int) -> media_pb2.Image:
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


def _resize(image: Image.Image, width: int, height: int) -> Image.Image:
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.LANCZOS)


def add_servicers(server: grpc.aio.Server, runtime: ServiceRuntime) -> None:
    t2i_pb2_grpc.add_ImageGenerationServiceServicer_to_server(T2IServicer(runtime), server)
