"""The models the benchmarks run, per size profile: real architectures with random weights, built
locally once and cached (services.runtime.model_cache), since no model hub is reachable here.

Profiles:
- "tiny": the test models (a smoke run: seconds per capability);
- "cpu": real-size or real-class architectures chosen so the whole run fits in 15 minutes on 2
  CPU cores: CLIP ViT-B/32, a small SD-class UNet at 256x256, a Qwen2.5-VL-like model with the
  Qwen2.5-0.5B text stack;
- "gpu": what a GPU run measures: CLIP ViT-B/32, the Stable Diffusion 1.5 UNet/VAE/CLIP-L text
  shapes at 512x512, a Qwen2.5-VL-3B-like model (3B text stack, 32-block vision tower).

omni always runs its default local model (real SmolLM2-135M-Instruct + Whisper tiny.en + Piper).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from services.runtime.model_cache import cached_model_dir

PROFILES = ("tiny", "cpu", "gpu")


# --- t2i: Stable Diffusion-class pipelines ----------------------------------------------------


def _sd_config(unet: dict[str, Any], vae: dict[str, Any], text: dict[str, Any]) -> dict[str, Any]:
    from services.t2i.builtin.stable_diffusion import SD_CONFIG

    config = copy.deepcopy(SD_CONFIG)
    config["unet"].update(unet)
    config["vae"].update(vae)
    config["text_encoder"].update(text)
    return config


_FOUR_DOWN = ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
_FOUR_UP = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
_VAE_8X = {
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
# CLIP ViT-L/14's text tower, as Stable Diffusion 1.x uses it (cross_attention_dim 768).
_CLIP_L_TEXT = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "projection_dim": 768,
}

SD_CONFIGS: dict[str, dict[str, Any]] = {
    # The tiny test pipeline with an 8x VAE: 256 px -> 32x32 latents like real SD.
    "tiny": _sd_config(
        {},
        {
            **_VAE_8X,
            "block_out_channels": [16, 16, 32, 32],
            "norm_num_groups": 16,
            "sample_size": 256,
        },
        {},
    ),
    # SD 1.x layout (four levels, cross-attention in three, 8x VAE, CLIP-L text encoder) at a
    # fifth of the UNet width (64..256 channels, one layer per block): about 15 M UNet
    # parameters, so a 256x256 job takes seconds on 2 CPU cores.
    "cpu": _sd_config(
        {
            "block_out_channels": [64, 128, 256, 256],
            "layers_per_block": 1,
            "down_block_types": _FOUR_DOWN,
            "up_block_types": _FOUR_UP,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
            "sample_size": 32,
        },
        {
            **_VAE_8X,
            "block_out_channels": [32, 64, 128, 128],
            "norm_num_groups": 32,
            "sample_size": 256,
        },
        _CLIP_L_TEXT,
    ),
    # Stable Diffusion 1.5's shapes (860 M UNet, 84 M VAE, 123 M text encoder).
    "gpu": _sd_config(
        {
            "block_out_channels": [320, 640, 1280, 1280],
            "layers_per_block": 2,
            "down_block_types": _FOUR_DOWN,
            "up_block_types": _FOUR_UP,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
            "sample_size": 64,
        },
        {
            **_VAE_8X,
            "block_out_channels": [128, 256, 512, 512],
            "layers_per_block": 2,
            "norm_num_groups": 32,
            "sample_size": 512,
        },
        _CLIP_L_TEXT,
    ),
}


def t2i_model_dir(profile: str) -> Path:
    from services.t2i.builtin import stable_diffusion

    config = SD_CONFIGS[profile]
    if profile == "tiny":
        # The built-in's own builder and cache entry, with the 8x VAE above.
        return stable_diffusion.model_dir(config)
    return cached_model_dir(
        f"bench-sd-{profile}",
        config,
        lambda folder: stable_diffusion.build_stable_diffusion(folder, config),
    )


# --- vl: Qwen2.5-VL-like models -----------------------------------------------------------------

# Keys as services.vl.builtin.qwen.SIZES spells them (its builder makes the model).
VL_SIZES: dict[str, dict[str, int]] = {
    # Qwen2.5-0.5B's text stack (896 wide, 24 layers, 14 heads, 2 KV heads, tied embeddings)
    # with an 8-block, 640-wide vision tower: about 0.53 B parameters.
    "cpu": {"hidden": 896, "intermediate": 4864, "layers": 24, "heads": 14, "kv_heads": 2,
            "vision_hidden": 640, "vision_depth": 8, "context": 8192},
    # Qwen2.5-VL-3B's text stack and a 32-block, 1280-wide vision tower (the real tower's
    # size; the shared builder gives it 4 heads): about 3.7 B parameters.
    "gpu": {"hidden": 2048, "intermediate": 11008, "layers": 36, "heads": 16, "kv_heads": 2,
            "vision_hidden": 1280, "vision_depth": 32, "context": 8192},
}  # fmt: skip


def vl_model_dir(profile: str) -> Path:
    from services.vl.builtin import qwen as tiny

    if profile == "tiny":
        return tiny.tiny_model_dir("qwen2_5_vl", "tiny")
    spec = {"family": "qwen2_5_vl", "size": dict(VL_SIZES[profile]), "version": 1}
    return cached_model_dir(
        f"bench-qwen2_5_vl-{profile}",
        spec,
        lambda folder: tiny.build_model(folder, spec),  # the tiny models' builder, at this size
    )


# --- vision: CLIP -------------------------------------------------------------------------------


def vision_model_dir(profile: str) -> Path:
    from services.vision.builtin.clip import clip_b32_dir, tiny_clip_dir

    return tiny_clip_dir() if profile == "tiny" else clip_b32_dir()


def describe(profile: str, capability: str) -> str:
    """One line naming a capability's model in a profile (for reports)."""
    names = {
        ("vision", "tiny"): "tiny CLIP (2 layers of 32)",
        ("vision", "cpu"): "CLIP ViT-B/32 (151 M, random weights)",
        ("vision", "gpu"): "CLIP ViT-B/32 (151 M, random weights)",
        ("t2i", "tiny"): "tiny SD (2-block UNet, 8x VAE)",
        ("t2i", "cpu"): "small SD-class (4-level UNet 64-256 ch, 8x VAE, CLIP-L text)",
        ("t2i", "gpu"): "SD 1.5 shapes (860 M UNet, random weights)",
        ("vl", "tiny"): "tiny Qwen2.5-VL (2 layers of 64)",
        ("vl", "cpu"): "Qwen2.5-VL-like 0.5B (Qwen2.5-0.5B text stack, 8-block vision)",
        ("vl", "gpu"): "Qwen2.5-VL-like 3B (Qwen2.5-VL-3B text stack, 32-block vision)",
        ("omni", "tiny"): "SmolLM2-135M-Instruct + Whisper tiny.en + Piper (real weights)",
        ("omni", "cpu"): "SmolLM2-135M-Instruct + Whisper tiny.en + Piper (real weights)",
        ("omni", "gpu"): "SmolLM2-135M-Instruct + Whisper tiny.en + Piper (real weights)",
        ("edge", "tiny"): "no model (sleepy test engine)",
        ("edge", "cpu"): "no model (sleepy test engine)",
        ("edge", "gpu"): "no model (sleepy test engine)",
        ("clients", "tiny"): "no model (sleepy test engine)",
        ("clients", "cpu"): "no model (sleepy test engine)",
        ("clients", "gpu"): "no model (sleepy test engine)",
    }
    return names[(capability, profile)]
