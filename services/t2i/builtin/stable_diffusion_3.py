"""The built-in tiny Stable Diffusion 3 pipeline: an MMDiT (SD3Transformer2DModel), two CLIP
text encoders with projections on the real CLIP tokenizer and a T5 encoder on a small
vocabulary, AutoencoderKL, flow-matching Euler."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from services.runtime.model_cache import cached_model_dir
from services.runtime.tokenizers import clip_tokenizer
from services.t2i.builtin.common import remove_tree, t5_tokenizer, tuples
from services.t2i.builtin.hunyuan_dit import HUNYUAN_CONFIG
from services.t2i.builtin.stable_diffusion import SD_CONFIG

_CLIP: dict[str, Any] = SD_CONFIG["text_encoder"]
# Wide enough for both CLIP encoders' hidden states side by side, which the pipeline pads to
# the T5 width and joins with the T5 tokens.
_JOINT = 2 * _CLIP["hidden_size"]

SD3_CONFIG: dict[str, Any] = {
    "transformer": {
        "sample_size": 32,
        "patch_size": 1,
        "in_channels": 4,
        "out_channels": 4,
        "num_layers": 1,
        "attention_head_dim": 8,
        "num_attention_heads": 4,
        "caption_projection_dim": 32,
        "joint_attention_dim": _JOINT,
        # Both CLIP encoders' pooled projections, concatenated.
        "pooled_projection_dim": 2 * _CLIP["projection_dim"],
    },
    # SD's tiny VAE with SD3's latent shift and scale, and no quant convolutions, as SD3's has.
    "vae": {
        **SD_CONFIG["vae"],
        "shift_factor": 0.0609,
        "scaling_factor": 1.5035,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    },
    "text_encoder": _CLIP,
    "text_encoder_2": _CLIP,
    "text_encoder_3": {"d_model": _JOINT, "d_kv": 8, "d_ff": 37, "num_layers": 2, "num_heads": 4},
    "t5_pieces": HUNYUAN_CONFIG["t5_pieces"],
}


def build_stable_diffusion_3(folder: Path, config: Mapping[str, Any] = SD3_CONFIG) -> None:
    """A StableDiffusion3Pipeline with the real CLIP tokenizer (its first two tokenizers) and a
    small T5 tokenizer, saved into `folder`."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    tokenizer = clip_tokenizer(folder / "_clip_vocab")
    tokenizer_3 = t5_tokenizer(config["t5_pieces"])
    pipe = StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(**tuples(config["transformer"])),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=AutoencoderKL(**tuples(config["vae"])),
        text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(**config["text_encoder"])),
        tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**config["text_encoder_2"])),
        tokenizer_2=tokenizer,
        text_encoder_3=T5EncoderModel(
            T5Config(vocab_size=len(tokenizer_3), **config["text_encoder_3"])
        ),
        tokenizer_3=tokenizer_3,
    )
    pipe.save_pretrained(folder)
    remove_tree(folder / "_clip_vocab")


def model_dir(config: Mapping[str, Any] | None = None) -> Path:
    """The built pipeline's folder (cached per config): the `builtin:stable_diffusion_3` model."""
    chosen = SD3_CONFIG if config is None else config
    return cached_model_dir(
        "t2i-tiny-stable_diffusion_3",
        chosen,
        lambda folder: build_stable_diffusion_3(folder, chosen),
    )
