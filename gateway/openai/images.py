"""POST /v1/images/generations -> t2i TextToImage / StreamTextToImage, and
POST /v1/images/edits (multipart) -> ImageToImage / StreamImageToImage, or InpaintImage /
StreamInpaintImage when a mask comes with it. Streams carry OpenAI's image streaming events:
the step previews as partial images, then the completed image(s)."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from openai.types import ImagesResponse
from openai.types.image import Image as ImageData
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from gateway.openai import calls, media
from gateway.openai.errors import from_grpc, invalid, path_rewriter, unknown_model
from gateway.openai.masks import inpainting_mask
from gateway.openai.schemas import ImageGenerationBody, parse, unsupported
from gateway.openai.state import State
from mmserve.common.v1 import media_pb2
from mmserve.t2i.v1 import t2i_pb2

_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
_PATHS = [
    (re.compile(r"^params\.(width|height)$"), "size"),
    (re.compile(r"^params\.num_images$"), "n"),
    (re.compile(r"^params\.output_quality$"), "output_compression"),
    (re.compile(r"^params\."), ""),
]


param_of = path_rewriter(_PATHS)


def _params(body: ImageGenerationBody) -> t2i_pb2.GenerationParams:
    if body.response_format == "url":
        raise unsupported(
            "response_format", "images are returned inline only: use 'b64_json' (the default)"
        )
    params = t2i_pb2.GenerationParams(prompt=body.prompt)
    if body.size and body.size != "auto":
        found = _SIZE.match(body.size)
        if not found:
            raise invalid(f"size: expected 'WIDTHxHEIGHT' or 'auto', got {body.size!r}", "size")
        params.width, params.height = int(found.group(1)), int(found.group(2))
    if body.n is not None:
        params.num_images = body.n
    if body.seed is not None:
        params.seed = body.seed
    if body.negative_prompt is not None:
        params.negative_prompt = body.negative_prompt
    if body.num_inference_steps is not None:
        params.num_inference_steps = body.num_inference_steps
    if body.guidance_scale is not None:
        params.guidance_scale = body.guidance_scale
    if body.output_format is not None:
        params.output_format = media.IMAGE_FORMATS[body.output_format]
    if body.output_compression is not None:
        params.output_quality = max(1, body.output_compression)
    return params


async def _default_steps(state: State, request: Request) -> int:
    served = (await state.models(request)).get("t2i")
    steps = served.info.limits.default_steps if served is not None else 0
    return int(steps) or 20


async def _preview(
    state: State, request: Request, body: ImageGenerationBody
) -> t2i_pb2.PreviewOptions | None:
    """Previews spread over the run so that about `partial_images` of them arrive."""
    if not body.stream or not body.partial_images:
        return None
    steps = body.num_inference_steps or await _default_steps(state, request)
    every = max(1, steps // (body.partial_images + 1))
    return t2i_pb2.PreviewOptions(every_n_steps=every, max_side=256)


def _format_name(image: media_pb2.Image) -> str:
    return media.IMAGE_NAMES.get(image.format, "png")


def _response(result: t2i_pb2.GenerationResult, size: str, job_id: str) -> Response:
    images = list(result.images)
    reply = ImagesResponse(
        created=int(time.time()),
        data=[ImageData(b64_json=media.b64(image.data)) for image in images],
        output_format=_format_name(images[0]) if images else None,  # type: ignore[arg-type]
        size=size or (f"{images[0].width}x{images[0].height}" if images else None),
    )
    return Response(
        reply.model_dump_json(exclude_none=True),
        media_type="application/json",
        headers={calls.JOB_HEADER: job_id} if job_id else None,
    )


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return calls.sse_named(kind, payload)


def _stream(call: Any, prefix: str, partial_images: int, job_id: str) -> calls.EventStream:
    """OpenAI's events: `<prefix>.partial_image` per preview (at most `partial_images`), then
    one `<prefix>.completed` per image."""

    async def events() -> AsyncIterator[bytes]:
        sent = 0
        try:
            while (event := await call.read()) is not grpc.aio.EOF:
                kind = event.WhichOneof("event")
                if kind == "step" and event.step.HasField("preview") and sent < partial_images:
                    preview = event.step.preview
                    yield _event(
                        f"{prefix}.partial_image",
                        {
                            "type": f"{prefix}.partial_image",
                            "b64_json": media.b64(preview.data),
                            "partial_image_index": sent,
                            "created_at": int(time.time()),
                            "size": f"{preview.width}x{preview.height}",
                            "output_format": _format_name(preview),
                            "quality": "auto",
                            "background": "opaque",
                        },
                    )
                    sent += 1
                elif kind == "result":
                    for image in event.result.images:
                        yield _event(
                            f"{prefix}.completed",
                            {
                                "type": f"{prefix}.completed",
                                "b64_json": media.b64(image.data),
                                "created_at": int(time.time()),
                                "size": f"{image.width}x{image.height}",
                                "output_format": _format_name(image),
                                "quality": "auto",
                                "background": "opaque",
                                "usage": {
                                    "input_tokens": 0,
                                    "output_tokens": 0,
                                    "total_tokens": 0,
                                    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
                                },
                            },
                        )
                else:
                    yield calls.KEEPALIVE
        except grpc.aio.AioRpcError as exc:
            yield calls.error_event(from_grpc(exc, param_of))

    return calls.EventStream(events(), on_close=call.cancel, job_id=job_id)


async def _check_model(state: State, request: Request, model: str | None) -> None:
    if model and await state.resolve(request, model, ("t2i",)) is None:
        raise unknown_model(model, "/v1/images")
    if "t2i" not in state.upstreams.stubs:
        raise unknown_model(model or "t2i", "/v1/images")


async def _run(
    request: Request,
    state: State,
    body: ImageGenerationBody,
    edit: media_pb2.Image | None,
    strength: float | None,
    mask: media_pb2.Image | None = None,
) -> Response:
    params = _params(body)
    preview = await _preview(state, request, body)
    stub = state.upstreams.stub("t2i")
    meta = calls.metadata(request)
    deadline = calls.timeout(request, state.settings.request_timeout_s)
    if edit is None:
        message: Any = t2i_pb2.TextToImageRequest(params=params, preview=preview)
        unary, streaming, prefix = stub.TextToImage, stub.StreamTextToImage, "image_generation"
    elif mask is None:
        message = t2i_pb2.ImageToImageRequest(params=params, image=edit, preview=preview)
        unary, streaming, prefix = stub.ImageToImage, stub.StreamImageToImage, "image_edit"
    else:
        message = t2i_pb2.InpaintImageRequest(params=params, image=edit, mask=mask, preview=preview)
        unary, streaming, prefix = stub.InpaintImage, stub.StreamInpaintImage, "image_edit"
    if edit is not None and strength is not None:
        message.strength = strength
    if body.stream:
        call = streaming(message, metadata=meta, timeout=deadline)
        try:
            accepted = await calls.first(call, param_of)
        except BaseException:
            call.cancel()
            raise
        return _stream(call, prefix, body.partial_images or 0, accepted.job_id)
    call = unary(message, metadata=meta, timeout=deadline)
    reply = await calls.unary(request, call, param_of)
    size = body.size if body.size and body.size != "auto" else ""
    return _response(reply.result, size, await calls.job_id(call))


async def generations(request: Request) -> Response:
    state: State = request.app.state.mmserve
    body: ImageGenerationBody = parse(ImageGenerationBody, await state.json(request))
    await _check_model(state, request, body.model)
    return await _run(request, state, body, None, None)


_FORM_FIELDS = (
    "model", "prompt", "n", "size", "response_format", "output_format", "output_compression",
    "stream", "partial_images", "quality", "background", "seed", "negative_prompt",
    "num_inference_steps", "guidance_scale",
)  # fmt: skip


async def edits(request: Request) -> Response:
    state: State = request.app.state.mmserve
    form = await state.form(request)
    uploads = [v for k, v in form.multi_items() if k in ("image", "image[]")]
    if not uploads or not isinstance(uploads[0], UploadFile):
        raise invalid("image: a file upload is required", "image")
    if len(uploads) > 1:
        raise unsupported("image", "one input image per request")
    mask_upload = form.get("mask")
    if mask_upload is not None and not isinstance(mask_upload, UploadFile):
        raise invalid("mask: a PNG file upload is expected", "mask")
    fields: dict[str, Any] = {k: form[k] for k in _FORM_FIELDS if isinstance(form.get(k), str)}
    if "stream" in fields:
        fields["stream"] = str(fields["stream"]).lower() in ("true", "1")
    body: ImageGenerationBody = parse(ImageGenerationBody, fields)
    strength: float | None = None
    if isinstance(form.get("strength"), str):
        try:
            strength = float(str(form["strength"]))
        except ValueError:
            raise invalid("strength: expected a number", "strength") from None
    await _check_model(state, request, body.model)
    upload = uploads[0]
    assert isinstance(upload, UploadFile)
    image = media_pb2.Image(data=await upload.read())
    mask: media_pb2.Image | None = None
    if mask_upload is not None:
        mask = media_pb2.Image(data=inpainting_mask(await mask_upload.read()))
    return await _run(request, state, body, image, strength, mask)
