"""The built-in tiny FLUX.1 pipeline: a FLUX transformer (double- and single-stream blocks,
guidance embedded as in FLUX.1-dev), a CLIP text encoder on the real CLIP tokenizer for the
pooled embedding, a T5 encoder on a small vocabulary for the sequence, AutoencoderKL with one
latent channel (packed 2x2 into the transformer's tokens), flow-matching Euler."""

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
_T5_WIDTH = 32

FLUX_CONFIG: dict[str, Any] = {
    "transformer": {
        "patch_size": 1,
        # One latent channel, packed 2x2 into each token.
        "in_channels": 4,
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": _T5_WIDTH,
        "pooled_projection_dim": _CLIP["hidden_size"],
        # Rotary dimensions per position axis; they sum to attention_head_dim.
        "axes_dims_rope": [4, 4, 8],
        "guidance_embeds": True,
    },
    "vae": {
        "sample_size": 32,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": [4],
        "layers_per_block": 1,
        "latent_channels": 1,
        "norm_num_groups": 1,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "shift_factor": 0.0609,
        "scaling_factor": 1.5035,
    },
    "text_encoder": _CLIP,
    "text_encoder_2": {
        "d_model": _T5_WIDTH,
        "d_kv": 8,
        "d_ff": 37,
        "num_layers": 2,
        "num_heads": 4,
    },
    "t5_pieces": HUNYUAN_CONFIG["t5_pieces"],
}


def build_flux(folder: Path, config: Mapping[str, Any] = FLUX_CONFIG) -> None:
    """A FluxPipeline with the real CLIP tokenizer and a small T5 tokenizer, saved into
    `folder`."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer_2 = t5_tokenizer(config["t5_pieces"])
    pipe = FluxPipeline(
        transformer=FluxTransformer2DModel(**tuples(config["transformer"])),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=AutoencoderKL(**tuples(config["vae"])),
        text_encoder=CLIPTextModel(CLIPTextConfig(**config["text_encoder"])),
        tokenizer=clip_tokenizer(folder / "_clip_vocab"),
        text_encoder_2=T5EncoderModel(
            T5Config(vocab_size=len(tokenizer_2), **config["text_encoder_2"])
        ),
        tokenizer_2=tokenizer_2,
    )
    pipe.save_pretrained(folder)
    remove_tree(folder / "_clip_vocab")


def model_dir(config: Mapping[str, Any] | None = None) -> Path:
    """The built pipeline's folder (cached per config): the `builtin:flux` model."""
    chosen = FLUX_CONFIG if config is None else config
    return cached_model_dir("t2i-tiny-flux", chosen, lambda folder: build_flux(folder, chosen))
