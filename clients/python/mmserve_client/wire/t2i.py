"""Text-to-image, image-to-image, inpainting and instruction-edit requests and results
(mmserve.t2i.v1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from mmserve.t2i.v1 import t2i_pb2

from ..events import Progress, T2IEvent
from ..images import ImageLike, decode_image, format_number, from_image_proto, to_image_proto
from ..results import Generation
from .common import shared_event, usage


class GenerateOptions(TypedDict, total=False):
    """Generation parameters, named as in diffusers; unset ones take the service's defaults."""

    negative_prompt: str
    width: int
    height: int
    steps: int  # num_inference_steps
    guidance_scale: float
    seed: int
    num_images: int
    output_format: str  # "png", "jpeg" or "webp"
    output_quality: int
    # A scheduler class from info().extras["schedulers"], e.g. "EulerDiscreteScheduler".
    scheduler: str
    # LoRA adapters from info().extras["adapters"]: {name: weight}, or names (weight 1.0) and
    # (name, weight) pairs.
    adapters: Mapping[str, float] | Sequence[str | tuple[str, float]]


_DIRECT = ("width", "height", "guidance_scale", "seed", "num_images", "output_quality")


def generation_params(prompt: str, options: GenerateOptions) -> t2i_pb2.GenerationParams:
    params = t2i_pb2.GenerationParams(
        prompt=prompt, negative_prompt=options.get("negative_prompt") or ""
    )
    for name in _DIRECT:
        value = options.get(name)
        if value is not None:
            setattr(params, name, value)
    steps = options.get("steps")
    if steps is not None:
        params.num_inference_steps = steps
    fmt = options.get("output_format")
    if fmt:
        params.output_format = format_number(fmt)
    params.scheduler = options.get("scheduler") or ""
    params.adapters.extend(adapter_weights(options.get("adapters") or ()))
    return params


def adapter_weights(
    adapters: Mapping[str, float] | Sequence[str | tuple[str, float]],
) -> list[t2i_pb2.AdapterWeight]:
    """The request's adapters, in the order given."""
    pairs = adapters.items() if isinstance(adapters, Mapping) else adapters
    chosen = []
    for entry in pairs:
        if isinstance(entry, str):
            chosen.append(t2i_pb2.AdapterWeight(name=entry))
        else:
            name, weight = entry
            chosen.append(t2i_pb2.AdapterWeight(name=name, weight=weight))
    return chosen


def preview_options(every: int, max_side: int) -> t2i_pb2.PreviewOptions:
    return t2i_pb2.PreviewOptions(every_n_steps=every, max_side=max_side)


def text_to_image(
    prompt: str, options: GenerateOptions, preview_every: int = 0, preview_max_side: int = 0
) -> t2i_pb2.TextToImageRequest:
    return t2i_pb2.TextToImageRequest(
        params=generation_params(prompt, options),
        preview=preview_options(preview_every, preview_max_side),
    )


def image_to_image(
    image: ImageLike,
    prompt: str,
    options: GenerateOptions,
    strength: float | None = None,
    preview_every: int = 0,
    preview_max_side: int = 0,
) -> t2i_pb2.ImageToImageRequest:
    request = t2i_pb2.ImageToImageRequest(
        params=generation_params(prompt, options),
        image=to_image_proto(image),
        preview=preview_options(preview_every, preview_max_side),
    )
    if strength is not None:
        request.strength = strength
    return request


def inpaint_image(
    image: ImageLike,
    mask: ImageLike,
    prompt: str,
    options: GenerateOptions,
    strength: float | None = None,
    preview_every: int = 0,
    preview_max_side: int = 0,
) -> t2i_pb2.InpaintImageRequest:
    """`mask`: the image's size; white is repainted, black kept."""
    request = t2i_pb2.InpaintImageRequest(
        params=generation_params(prompt, options),
        image=to_image_proto(image),
        mask=to_image_proto(mask),
        preview=preview_options(preview_every, preview_max_side),
    )
    if strength is not None:
        request.strength = strength
    return request


def edit_image(
    image: ImageLike,
    instruction: str,
    options: GenerateOptions,
    preview_every: int = 0,
    preview_max_side: int = 0,
) -> t2i_pb2.EditImageRequest:
    return t2i_pb2.EditImageRequest(
        params=generation_params(instruction, options),
        image=to_image_proto(image),
        preview=preview_options(preview_every, preview_max_side),
    )


def generation(result: t2i_pb2.GenerationResult, job_id: str) -> Generation:
    encoded = [from_image_proto(image) for image in result.images]
    return Generation(
        job_id=job_id,
        images=[image.to_pil() for image in encoded],
        encoded=encoded,
        seed=result.seed,
        steps=result.steps,
        prompt_truncated=result.prompt_truncated,
        usage=usage(result.usage),
    )


def generation_response(response: Any, job_id: str) -> Generation:
    """TextToImageResponse, ImageToImageResponse, InpaintImageResponse or EditImageResponse."""
    return generation(response.result, job_id)


def t2i_event(response: Any) -> T2IEvent | None:
    """Any t2i stream's response (text-to-image, image-to-image, inpainting, edits); None for
    unknown events."""
    shared = shared_event(response)
    if shared is not None:
        return shared
    kind = response.WhichOneof("event")
    if kind == "step":
        step = response.step
        preview = decode_image(step.preview.data) if step.HasField("preview") else None
        return Progress(
            response.job_id,
            step.progress.step,
            step.progress.total_steps,
            step.progress.elapsed_seconds,
            step.progress.eta_seconds,
            preview,
        )
    if kind == "result":
        return generation(response.result, response.job_id)
    return None
