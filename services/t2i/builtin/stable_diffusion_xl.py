"""The built-in tiny Stable Diffusion XL pipeline: a UNet with SDXL's text-and-time conditioning,
two CLIP text encoders (the second with a projection, whose pooled output conditions the UNet)
sharing the real CLIP tokenizer, AutoencoderKL, Euler."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from services.runtime.model_cache import cached_model_dir
from services.runtime.tokenizers import clip_tokenizer
from services.t2i.builtin.common import remove_tree, tuples
from services.t2i.builtin.stable_diffusion import SD_CONFIG

# Both encoders are SD's tiny CLIP text encoder (the second one's projection gives the pooled
# embedding).
_TEXT_ENCODER: dict[str, Any] = SD_CONFIG["text_encoder"]
_SHARED_SCHEDULE = ("beta_start", "beta_end", "beta_schedule", "steps_offset")
# SDXL's six time ids (original size, crop corner, target size) are each embedded this wide.
_TIME_EMBED = 8

SDXL_CONFIG: dict[str, Any] = {
    # SD's tiny UNet, with SDXL's conditioning: linear attention projections, a deeper second
    # block, and the pooled text embedding plus the embedded time ids added to the time embedding.
    "unet": {
        **SD_CONFIG["unet"],
        "attention_head_dim": [2, 4],
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": _TIME_EMBED,
        "transformer_layers_per_block": [1, 2],
        "projection_class_embeddings_input_dim": _TEXT_ENCODER["projection_dim"] + 6 * _TIME_EMBED,
        # Both encoders' penultimate hidden states, concatenated.
        "cross_attention_dim": 2 * _TEXT_ENCODER["hidden_size"],
    },
    "vae": SD_CONFIG["vae"],
    "text_encoder": _TEXT_ENCODER,
    "text_encoder_2": _TEXT_ENCODER,
    # SD's noise schedule, stepped by SDXL's default scheduler (Euler).
    "scheduler": {
        **{key: SD_CONFIG["scheduler"][key] for key in _SHARED_SCHEDULE},
        "timestep_spacing": "leading",
    },
}


def build_stable_diffusion_xl(folder: Path, config: Mapping[str, Any] = SDXL_CONFIG) -> None:
    """A StableDiffusionXLPipeline with the real CLIP tokenizer (both of its tokenizers),
    saved into `folder`."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = clip_tokenizer(folder / "_clip_vocab")
    pipe = StableDiffusionXLPipeline(
        unet=UNet2DConditionModel(**tuples(config["unet"])),
        vae=AutoencoderKL(**tuples(config["vae"])),
        text_encoder=CLIPTextModel(CLIPTextConfig(**config["text_encoder"])),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**config["text_encoder_2"])),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        scheduler=EulerDiscreteScheduler(**config["scheduler"]),
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)
    remove_tree(folder / "_clip_vocab")


def model_dir(config: Mapping[str, Any] | None = None) -> Path:
    """The built pipeline's folder (cached per config): the `builtin:stable_diffusion_xl` model."""
    chosen = SDXL_CONFIG if config is None else config
    return cached_model_dir(
        "t2i-tiny-stable_diffusion_xl",
        chosen,
        lambda folder: build_stable_diffusion_xl(folder, chosen),
    )
