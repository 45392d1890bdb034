"""What each diffusion family expects from a request, and the limits a service enforces.

The family name comes from the model folder (runtime `discover_family` on model_index.json);
a family not listed here gets the generic profile, so any pipeline diffusers loads still serves
with sensible limits. Operators override any limit in the settings.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

from services.t2i.config import T2ISettings

T = TypeVar("T")
log = logging.getLogger("mmserve.t2i.families")


@dataclass(frozen=True)
class FamilyProfile:
    """Defaults and calling conventions of one family of pipelines."""

    size_multiple: int = 8
    min_size: int = 64
    max_size: int = 2048
    max_pixels: int = 2048 * 2048
    default_steps: int = 30
    max_steps: int = 150
    default_guidance: float = 7.5
    max_guidance: float = 30.0
    max_images: int = 4
    max_prompt_chars: int = 4000
    # False where the pipeline has no negative prompt (FLUX): a sent one is ignored.
    negative_prompt: bool = True
    # The __call__ argument that takes classifier-free guidance (Qwen-Image: true_cfg_scale).
    cfg_argument: str = "guidance_scale"
    # Qwen-Image only runs true CFG when some negative prompt is given; " " is its documented
    # neutral one.
    blank_negative_for_cfg: bool = False
    # Token limits of tokenizers whose model_max_length is not what the pipeline truncates to.
    token_limits: Mapping[str, int] = field(default_factory=dict)
    # True where the pipeline guides as `uncond + scale * (cond - uncond)` over image rows, so
    # a denoising batch can give each row its own scale (services.t2i.batching.RowGuidance).
    row_guidance: bool = False
    # True where a cancelled row can be cut out of the running loop (services.t2i.row_cut):
    # the loop rebuilds every per-row input from the tensors its step-end callback returns.
    row_cut: bool = False


GENERIC = FamilyProfile()

PROFILES: dict[str, FamilyProfile] = {
    # SD 1.x/2.x were trained at 512/768: larger sizes tile badly and cost quadratically.
    "stable_diffusion": replace(
        GENERIC, max_size=1024, max_pixels=1024 * 1024, row_guidance=True, row_cut=True
    ),
    # SDXL's loop takes its pooled text embeddings and time ids back from the step-end
    # callback with the latents and prompt embeddings, so rows can be cut there too.
    "stable_diffusion_xl": replace(GENERIC, default_guidance=5.0, row_guidance=True, row_cut=True),
    "stable_diffusion_3": replace(
        GENERIC,
        size_multiple=16,
        default_steps=28,
        default_guidance=7.0,
        token_limits={"tokenizer_3": 256},
        row_guidance=True,
        # The loop takes its prompt and pooled embeddings back from the step-end callback.
        row_cut=True,
    ),
    "flux": replace(
        GENERIC,
        size_multiple=16,
        default_steps=28,
        default_guidance=3.5,
        negative_prompt=False,
        token_limits={"tokenizer_2": 512},
    ),
    "hunyuan_dit": replace(
        GENERIC,
        size_multiple=16,
        default_steps=50,
        default_guidance=5.0,
        token_limits={"tokenizer": 77, "tokenizer_2": 256},
    ),
    "qwen_image": replace(
        GENERIC,
        size_multiple=16,
        default_steps=50,
        default_guidance=4.0,
        cfg_argument="true_cfg_scale",
        blank_negative_for_cfg=True,
        token_limits={"tokenizer": 512},
        row_guidance=True,
    ),
}


# Qwen-Image-Edit checkpoints are Qwen-Image with an edit-trained transformer.
PROFILES["qwen_image_edit"] = PROFILES["qwen_image"]


def profile_for(family: str) -> FamilyProfile:
    return PROFILES.get(family, GENERIC)


@dataclass(frozen=True)
class GenerationLimits:
    """The limits one loaded pipeline enforces; GetModelInfo reports exactly these."""

    size_multiple: int
    min_size: int
    max_size: int
    max_pixels: int
    default_width: int
    default_height: int
    max_steps: int
    default_steps: int
    max_images_per_request: int
    max_guidance_scale: float
    default_guidance_scale: float
    default_strength: float
    max_prompt_chars: int
    max_prompt_tokens: int
    supports_image_to_image: bool
    supports_negative_prompt: bool
    supports_inpainting: bool = False
    supports_image_editing: bool = False


def resolve_limits(
    profile: FamilyProfile,
    settings: T2ISettings,
    *,
    native_size: int,
    min_multiple: int,
    max_prompt_tokens: int,
    supports_image_to_image: bool,
    scheduler_max_steps: int | None = None,
) -> GenerationLimits:
    """Family defaults overridden by settings. `native_size` is the model's own output size,
    `min_multiple` the granularity its latents need (VAE factor times patch size) and
    `scheduler_max_steps` the most steps its scheduler can take (its training timesteps)."""
    multiple = _pick(settings.size_multiple, max(profile.size_multiple, min_multiple))
    min_size = _round_up(_pick(settings.min_size, profile.min_size), multiple)
    max_size = _pick(settings.max_size, profile.max_size) // multiple * multiple
    if max_size < min_size:
        raise ValueError(
            f"no size fits: min_size {min_size} > max_size {max_size} at multiple {multiple}"
        )
    native = min(max(_round_up(native_size, multiple), min_size), max_size)
    max_steps = _pick(settings.max_steps, profile.max_steps)
    if scheduler_max_steps is not None and max_steps > scheduler_max_steps:
        if settings.max_steps is not None:
            log.warning(
                "max_steps %d exceeds the scheduler's %d timesteps; using %d",
                max_steps,
                scheduler_max_steps,
                scheduler_max_steps,
            )
        max_steps = scheduler_max_steps
    max_guidance = _pick(settings.max_guidance_scale, profile.max_guidance)
    limits = GenerationLimits(
        size_multiple=multiple,
        min_size=min_size,
        max_size=max_size,
        max_pixels=_pick(settings.max_pixels, profile.max_pixels),
        default_width=_pick(settings.default_width, native),
        default_height=_pick(settings.default_height, native),
        max_steps=max_steps,
        default_steps=_pick(settings.default_steps, min(profile.default_steps, max_steps)),
        max_images_per_request=_pick(settings.max_images_per_request, profile.max_images),
        max_guidance_scale=max_guidance,
        default_guidance_scale=_pick(
            settings.default_guidance_scale, min(profile.default_guidance, max_guidance)
        ),
        default_strength=settings.default_strength,
        max_prompt_chars=_pick(settings.max_prompt_chars, profile.max_prompt_chars),
        max_prompt_tokens=max_prompt_tokens,
        supports_image_to_image=supports_image_to_image,
        supports_negative_prompt=profile.negative_prompt,
    )
    _check_defaults(limits)
    return limits


def _check_defaults(limits: GenerationLimits) -> None:
    # Configured defaults must themselves be valid requests, or every default request fails.
    for name in ("default_width", "default_height"):
        value = getattr(limits, name)
        if value % limits.size_multiple or not limits.min_size <= value <= limits.max_size:
            raise ValueError(
                f"{name} {value} must be a multiple of {limits.size_multiple} within "
                f"[{limits.min_size}, {limits.max_size}]"
            )
    if limits.default_width * limits.default_height > limits.max_pixels:
        raise ValueError("default_width * default_height exceeds max_pixels")
    if limits.default_steps > limits.max_steps:
        raise ValueError("default_steps exceeds max_steps")
    if limits.default_guidance_scale > limits.max_guidance_scale:
        raise ValueError("default_guidance_scale exceeds max_guidance_scale")


def _pick(override: T | None, default: T) -> T:
    return default if override is None else override


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
