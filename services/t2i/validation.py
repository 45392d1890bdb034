"""Checking a generation request against the loaded pipeline's limits, before it is queued.

Every problem is reported at once, each with the request field it concerns, so a client fixes
its request in one round trip. The result is a `GenerationPlan` with every default filled in:
the job that runs later never has to guess.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

from PIL import Image

from services.runtime.errors import Unimplemented, Violations
from services.t2i.adapters import AdapterChoice
from services.t2i.families import GenerationLimits

MAX_SEED = 2**64 - 1
# Random seeds stay below 2**53 so they survive JSON clients that parse numbers as doubles.
_RANDOM_SEED_BOUND = 2**53


@dataclass(frozen=True)
class GenerationRequest:
    """A request as the client sent it; None means "not set" (proto3 optional presence)."""

    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    num_images: int | None = None
    # Image-to-image only: the decoded input's size and the strength.
    input_size: tuple[int, int] | None = None
    strength: float | None = None
    # LoRA adapters and scheduler; checked against the loaded pipeline by the engine.
    adapters: tuple[AdapterChoice, ...] = ()
    scheduler: str = ""


@dataclass(frozen=True)
class GenerationPlan:
    """A validated request with every default resolved."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    num_images: int
    strength: float | None = None  # set for image-to-image
    image: Image.Image | None = None  # the input, already resized to width x height
    mask: Image.Image | None = None  # inpainting: greyscale, width x height, white repaints
    edit: bool = False  # an instruction edit: `image` is the input as sent, at its own size
    preview_every: int = 0  # emit a preview every this many steps; 0 never
    adapters: tuple[tuple[str, float], ...] = ()  # (name, weight) active for the job
    scheduler: str = ""  # scheduler class for the job; "" the configured one


def plan_generation(
    request: GenerationRequest, limits: GenerationLimits, problems: Violations | None = None
) -> GenerationPlan:
    """The plan for `request`. Every bad field is added to `problems`, for the caller to report
    with the ones it found itself (the plan is then not to be run); without `problems`,
    InvalidArgument names them here."""
    img2img = request.input_size is not None
    if img2img and not limits.supports_image_to_image:
        raise Unimplemented("this model family has no image-to-image pipeline")
    report_here = problems is None
    problems = Violations() if problems is None else problems
    _check_prompt(request, limits, problems)
    width, height = _size(request, limits, problems)
    steps = _bounded_int(
        request.steps,
        limits.default_steps,
        1,
        limits.max_steps,
        "params.num_inference_steps",
        problems,
    )
    images = _bounded_int(
        request.num_images, 1, 1, limits.max_images_per_request, "params.num_images", problems
    )
    guidance = _guidance(request.guidance_scale, limits, problems)
    strength = _strength(request, limits, steps, problems) if img2img else None
    if report_here:
        problems.raise_if_any()
    seed = request.seed if request.seed is not None else secrets.randbelow(_RANDOM_SEED_BOUND)
    return GenerationPlan(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=guidance,
        seed=seed,
        num_images=images,
        strength=strength,
    )


def _check_prompt(
    request: GenerationRequest, limits: GenerationLimits, problems: Violations
) -> None:
    if not request.prompt.strip():
        problems.add("params.prompt", "must not be empty")
    for name, text in (
        ("params.prompt", request.prompt),
        ("params.negative_prompt", request.negative_prompt),
    ):
        if len(text) > limits.max_prompt_chars:
            problems.add(name, f"is {len(text)} characters; at most {limits.max_prompt_chars}")


def _size(
    request: GenerationRequest, limits: GenerationLimits, problems: Violations
) -> tuple[int, int]:
    default_w, default_h = (
        fit_size(request.input_size, limits)
        if request.input_size is not None
        else (limits.default_width, limits.default_height)
    )
    width = default_w if request.width is None else request.width
    height = default_h if request.height is None else request.height
    ok = True
    for name, value in (("params.width", width), ("params.height", height)):
        if value % limits.size_multiple or not limits.min_size <= value <= limits.max_size:
            problems.add(
                name,
                f"{value} must be a multiple of {limits.size_multiple} in "
                f"[{limits.min_size}, {limits.max_size}]",
            )
            ok = False
    if ok and width * height > limits.max_pixels:
        description = f"{width}x{height} exceeds {limits.max_pixels} pixels"
        # Name the field the client set (both when both or neither were set).
        for name, was_set in (
            ("params.width", request.width is not None),
            ("params.height", request.height is not None),
        ):
            if was_set or (request.width is None) == (request.height is None):
                problems.add(name, description)
    return width, height


def fit_size(size: tuple[int, int], limits: GenerationLimits) -> tuple[int, int]:
    """An input image's size as an output size: the same aspect ratio, scaled down to fit
    max_size and max_pixels (never up, except to min_size), rounded to the multiple."""
    width, height = max(1, size[0]), max(1, size[1])
    scale = min(
        1.0,
        limits.max_size / width,
        limits.max_size / height,
        math.sqrt(limits.max_pixels / (width * height)),
    )
    multiple = limits.size_multiple

    def snap(value: float) -> int:
        rounded = int(value) // multiple * multiple
        return min(max(rounded, limits.min_size), limits.max_size)

    fitted_w, fitted_h = snap(width * scale), snap(height * scale)
    # Rounding min_size up can overshoot max_pixels for extreme aspect ratios: shrink the
    # longer side until it fits.
    while fitted_w * fitted_h > limits.max_pixels and max(fitted_w, fitted_h) > limits.min_size:
        if fitted_w >= fitted_h:
            fitted_w -= multiple
        else:
            fitted_h -= multiple
    return fitted_w, fitted_h


def _bounded_int(
    value: int | None,
    default: int,
    low: int,
    high: int,
    name: str,
    problems: Violations,
) -> int:
    if value is None:
        return default
    if not low <= value <= high:
        problems.add(name, f"{value} is not in [{low}, {high}]")
    return value


def _guidance(value: float | None, limits: GenerationLimits, problems: Violations) -> float:
    if value is None:
        return limits.default_guidance_scale
    if not math.isfinite(value) or not 0.0 <= value <= limits.max_guidance_scale:
        problems.add("params.guidance_scale", f"{value} is not in [0, {limits.max_guidance_scale}]")
    return value


def _strength(
    request: GenerationRequest, limits: GenerationLimits, steps: int, problems: Violations
) -> float:
    value = limits.default_strength if request.strength is None else request.strength
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        problems.add("strength", f"{value} is not in (0, 1]")
    elif steps * value < 1.0:
        # Pipelines run about steps * strength steps; zero would fail inside the job. Either
        # field can fix it, so both are named (whichever the client changed last is the one
        # it looks for).
        rule = (
            f"strength {value:.6g} x {steps} steps leaves no denoising step; raise strength or "
            "num_inference_steps"
        )
        problems.add("strength", rule)
        problems.add("params.num_inference_steps", rule)
    return value
