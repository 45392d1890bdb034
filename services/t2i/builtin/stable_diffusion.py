"""The built-in tiny Stable Diffusion pipeline: UNet, AutoencoderKL, a CLIP text encoder with
the real CLIP tokenizer, DDIM."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from services.runtime.model_cache import cached_model_dir
from services.runtime.tokenizers import clip_tokenizer
from services.t2i.builtin.common import remove_tree, tuples

SD_CONFIG: dict[str, Any] = {
    "unet": {
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    "vae": {
        "block_out_channels": [32, 64],
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 64,
    },
    "text_encoder": {
        "vocab_size": 49408,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "projection_dim": 32,
    },
    "scheduler": {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    },
}


def _eager(factory: Callable[[], Any]) -> Any:
    return factory()


def build_stable_diffusion(
    folder: Path,
    config: Mapping[str, Any] = SD_CONFIG,
    construct: Callable[[Callable[[], Any]], Any] = _eager,
) -> None:
    """A StableDiffusionPipeline with the real CLIP tokenizer, saved into `folder`.
    `construct` makes each model from its factory (the bench passes a faster random init)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    pipe = StableDiffusionPipeline(
        unet=construct(lambda: UNet2DConditionModel(**tuples(config["unet"]))),
        vae=construct(lambda: AutoencoderKL(**tuples(config["vae"]))),
        text_encoder=construct(lambda: CLIPTextModel(CLIPTextConfig(**config["text_encoder"]))),
        tokenizer=clip_tokenizer(folder / "_clip_vocab"),
        scheduler=DDIMScheduler(**config["scheduler"]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    remove_tree(folder / "_clip_vocab")


def model_dir(config: Mapping[str, Any] | None = None) -> Path:
    """The built pipeline's folder (cached per config): the `builtin:stable_diffusion` model."""
    chosen = SD_CONFIG if config is None else config
    return cached_model_dir(
        "t2i-tiny-stable_diffusion", chosen, lambda folder: build_stable_diffusion(folder, chosen)
    )
