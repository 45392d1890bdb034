"""Settings of the t2i service: the shared ones plus generation limits, previews and memory.

Every request limit defaults to the loaded family's own value (see `families.py`): leaving a
field unset means "what suits this model", setting it overrides that for any family.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from services.runtime.config import ServiceSettings

TinyFamily = Literal["stable_diffusion", "hunyuan_dit", "qwen_image"]


class T2ISettings(ServiceSettings):
    """mmserve text-to-image / image-to-image service (diffusers pipelines)."""

    section: ClassVar[str] = "t2i"

    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int | None = Field(
        9091, ge=0, le=65535, description="Prometheus /metrics HTTP port; 0 free, unset off."
    )

    # --- model ---
    tiny_model: TinyFamily = Field(
        "stable_diffusion",
        description="Deprecated: use --model builtin:<family>. The built-in tiny random-weight "
        "pipeline served when `model` is empty.",
    )
    variant: str | None = Field(
        None, description="Weights variant to load, e.g. fp16 (files named *.fp16.safetensors)."
    )
    scheduler: str = Field(
        "",
        description="Replace the pipeline's scheduler with this diffusers class (from its "
        "config), e.g. EulerDiscreteScheduler; empty keeps the model's own.",
    )
    lora_dir: str = Field(
        "",
        description="Folder of LoRA adapters (*.safetensors in a format diffusers' "
        "load_lora_weights reads), loaded at start; each file's stem is the adapter name a "
        "request passes in GenerationParams.adapters. Empty: no adapters.",
    )
    max_adapter_weight: float = Field(
        10.0, gt=0, description="Largest absolute weight a request may give an adapter."
    )
    step_cache: Literal["none", "first_block"] = Field(
        "none",
        description="Skip denoiser work between similar steps with diffusers' own cache hooks: "
        "first_block (First Block Cache) reuses the rest of the transformer's output while the "
        "first block's output barely changes. Faster, slightly different images. Families "
        "whose denoiser has diffusers' cache hooks (FLUX, Qwen-Image, ...); others fail loading.",
    )
    step_cache_threshold: float = Field(
        0.05,
        gt=0,
        le=1,
        description="First Block Cache: relative change of the first block's residual under "
        "which the other blocks are skipped; higher is faster and further from uncached.",
    )
    compile_mode: str | None = Field(
        None, description="torch.compile mode when compile is on (default, max-autotune, ...)."
    )

    # --- request limits (unset: the family's default; reported by GetModelInfo) ---
    size_multiple: int | None = Field(
        None, ge=1, le=256, description="Width and height must be multiples of this."
    )
    min_size: int | None = Field(None, ge=1, description="Smallest width or height in pixels.")
    max_size: int | None = Field(None, ge=1, description="Largest width or height in pixels.")
    max_pixels: int | None = Field(None, ge=1, description="Largest width * height.")
    default_width: int | None = Field(
        None, ge=1, description="Width when a request leaves it unset (the model's native size)."
    )
    default_height: int | None = Field(
        None, ge=1, description="Height when a request leaves it unset (the model's native size)."
    )
    max_steps: int | None = Field(None, ge=1, description="Most denoising steps per request.")
    default_steps: int | None = Field(
        None, ge=1, description="Denoising steps when a request leaves them unset."
    )
    max_images_per_request: int | None = Field(
        None, ge=1, le=64, description="Most images one request may ask for."
    )
    max_guidance_scale: float | None = Field(None, ge=0, description="Largest guidance_scale.")
    default_guidance_scale: float | None = Field(
        None, ge=0, description="guidance_scale when a request leaves it unset."
    )
    max_prompt_chars: int | None = Field(
        None, ge=1, description="Longest prompt (and negative prompt) in characters."
    )
    default_strength: float = Field(
        0.6, gt=0, le=1, description="Image-to-image strength when a request leaves it unset."
    )
    resolution_binning: bool = Field(
        False,
        description="Let pipelines that support it (HunyuanDiT, PixArt) snap sizes to their "
        "trained resolutions and resize back; off generates the requested size directly.",
    )

    # --- previews ---
    preview_default_max_side: int = Field(
        128, ge=16, le=512, description="Preview size when a request's max_side is 0."
    )

    # --- batching ---
    max_batch_size: int = Field(
        4,
        ge=1,
        le=64,
        description="Most text-to-image requests of one shape (size, steps, guidance, "
        "scheduler, adapters) denoised as one batch; each keeps its prompt, negative prompt, "
        "seeds and previews. 1 runs every request alone.",
    )
    max_batch_wait_ms: float = Field(
        0.0,
        ge=0,
        description="How long the oldest queued request waits for companions of its shape; 0 "
        "batches whatever queued while the device was busy and never delays a lone request.",
    )

    # --- memory and speed ---
    vae_slicing: bool = Field(False, description="Decode a batch of images one at a time.")
    vae_tiling: bool = Field(
        False, description="Decode large images in tiles (less memory, slight seams possible)."
    )
    cpu_offload: Literal["none", "model", "sequential"] = Field(
        "none",
        description="Keep idle components in CPU memory: model (whole components, small slowdown) "
        "or sequential (layer by layer, least memory, slow). GPU only.",
    )
    torch_threads: int = Field(
        0, ge=0, description="torch intra-op threads on CPU; 0 keeps torch's default."
    )
    warmup_steps: int = Field(
        2, ge=0, description="Denoising steps of the warm-up run before SERVING; 0 skips it."
    )

    @model_validator(mode="after")
    def _check_ranges(self) -> T2ISettings:
        if (self.min_size or 0) > (self.max_size or math.inf):
            raise ValueError("min_size must be <= max_size")
        if (self.default_steps or 0) > (self.max_steps or math.inf):
            raise ValueError("default_steps must be <= max_steps")
        return self
