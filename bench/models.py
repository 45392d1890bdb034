"""The models the benchmarks run, per size profile: real architectures with random weights, built
locally once and cached (services.runtime.model_cache), since no model hub is reachable here.

Profiles:
- "tiny": the test models (a smoke run: seconds per capability);
- "cpu": real-size or real-class architectures chosen so the whole run fits in 15 minutes on 2
  CPU cores: CLIP ViT-B/32, a small SD-class UNet at 256x256, a Qwen2.5-VL-like model with the
  Qwen2.5-0.5B text stack;
- "gpu": what a GPU run measures: CLIP ViT-L/14, the Stable Diffusion 1.5 UNet/VAE/CLIP-L text
  shapes at 512x512, a Qwen2.5-VL-3B-like model (3B text stack, 32-block vision tower). These
  are built fast (bench.random_weights: meta-device init, one fill pass, saved in bf16), so a
  fresh GPU machine has all three in well under a minute instead of several.

omni always runs its default local model (real SmolLM2-135M-Instruct + Whisper tiny.en + Piper).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from services.runtime.model_cache import cached_model_dir

PROFILES = ("tiny", "cpu", "gpu")
# The dtype the GPU profile's folders are saved in (what the GPU runs load them as).
GPU_SAVE_DTYPE = "bfloat16"


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
    if profile == "gpu":
        spec = {"config": config, "dtype": GPU_SAVE_DTYPE, "build": "fast"}
        return cached_model_dir(
            "bench-sd-gpu", spec, lambda folder: build_sd_fast(folder, config, GPU_SAVE_DTYPE)
        )
    return cached_model_dir(
        f"bench-sd-{profile}",
        config,
        lambda folder: stable_diffusion.build_stable_diffusion(folder, config),
    )


def build_sd_fast(folder: Path, config: dict[str, Any], dtype: str) -> None:
    """The Stable Diffusion pipeline of `config` with fast random weights (bench.random_weights),
    saved in `dtype`: the built-in's builder with another way to make each model."""
    import torch

    from bench.random_weights import empty, materialise
    from services.t2i.builtin.stable_diffusion import build_stable_diffusion

    torch_dtype = getattr(torch, dtype)

    def fast(factory: Any) -> Any:
        return materialise(empty(factory), torch_dtype).eval()

    build_stable_diffusion(folder, config, construct=fast)


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
    if profile == "gpu":
        spec.update(dtype=GPU_SAVE_DTYPE, build="fast")
        return cached_model_dir(
            "bench-qwen2_5_vl-gpu", spec, lambda folder: build_vl_fast(folder, spec)
        )
    return cached_model_dir(
        f"bench-qwen2_5_vl-{profile}",
        spec,
        lambda folder: tiny.build_model(folder, spec),  # the tiny models' builder, at this size
    )


def build_vl_fast(folder: Path, spec: dict[str, Any]) -> None:
    """The built-in Qwen-VL builder's folder (same config, tokenizer, chat template and image
    processor) with fast random weights saved in spec["dtype"]. The weights use transformers'
    usual 0.02 std, not the tiny models' 0.3 (which 36 bf16 layers would overflow). Needs a
    tied output head (the shared builder's configs tie it)."""
    import torch
    from transformers import GenerationConfig
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    from bench.random_weights import empty, materialise
    from services.runtime.tokenizers import QWEN25_EXTRA_SPECIALS, QWEN_VL_SPECIALS, qwen_tokenizer
    from services.vl.builtin import qwen
    from services.vl.config import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS

    size: dict[str, int] = spec["size"]
    dtype = getattr(torch, spec["dtype"])
    model = materialise(empty(lambda: qwen._model(spec["family"], size)), dtype)
    # Zero embedding rows (tied to the output head) for the end tokens: their logits are then 0
    # while the largest of 151 k random logits is positive, so greedy decoding never stops early
    # and every request generates exactly max_new_tokens, served and in-process alike.
    with torch.no_grad():
        model.get_input_embeddings().weight[[qwen.IM_END_ID, qwen.ENDOFTEXT_ID]] = 0
    model.generation_config = GenerationConfig(
        bos_token_id=qwen.ENDOFTEXT_ID,
        eos_token_id=[qwen.IM_END_ID, qwen.ENDOFTEXT_ID],
        pad_token_id=qwen.ENDOFTEXT_ID,
    )
    model.save_pretrained(folder)
    tokenizer = qwen_tokenizer(
        QWEN_VL_SPECIALS + QWEN25_EXTRA_SPECIALS,
        chat_template=qwen.QWEN_VL_CHAT_TEMPLATE,
        model_max_length=size["context"],
    )
    tokenizer.save_pretrained(folder)
    images = Qwen2VLImageProcessorPil(min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_MAX_PIXELS)
    images.save_pretrained(folder)
    # Real checkpoints name their processor here; the service's loader reads it.
    config_path = folder / "preprocessor_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["processor_class"] = "Qwen2_5_VLProcessor"
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


# --- vision: CLIP -------------------------------------------------------------------------------

# CLIP ViT-L/14 as OpenAI released it (224 px): 428 M parameters, 768-d embeddings.
CLIP_L14: dict[str, Any] = {
    "text_config": {
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
    },
    "vision_config": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_size": 224,
        "patch_size": 14,
    },
    "projection_dim": 768,
    "image_size": 224,
}


def vision_model_dir(profile: str) -> Path:
    from services.vision.builtin.clip import clip_b32_dir, tiny_clip_dir

    if profile == "gpu":
        spec = {"clip": CLIP_L14, "dtype": GPU_SAVE_DTYPE, "build": "fast"}
        return cached_model_dir(
            "bench-clip-l14-gpu",
            spec,
            lambda folder: build_clip_fast(folder, CLIP_L14, GPU_SAVE_DTYPE),
        )
    return tiny_clip_dir() if profile == "tiny" else clip_b32_dir()


def build_clip_fast(folder: Path, spec: dict[str, Any], dtype: str) -> None:
    """What services.vision.builtin.clip.build_clip writes (the real CLIP tokenizer, the CLIP
    image processor), with fast random weights saved in `dtype`."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    from bench.random_weights import empty, materialise
    from services.runtime.tokenizers import clip_tokenizer

    config = CLIPConfig(
        text_config=spec["text_config"],
        vision_config=spec["vision_config"],
        projection_dim=spec["projection_dim"],
    )
    model = materialise(empty(lambda: CLIPModel(config)), getattr(torch, dtype))
    model.save_pretrained(folder)
    side = spec["image_size"]
    tokenizer = clip_tokenizer(folder, max_length=spec["text_config"]["max_position_embeddings"])
    images = CLIPImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)


def describe(profile: str, capability: str) -> str:
    """One line naming a capability's model in a profile (for reports)."""
    names = {
        ("vision", "tiny"): "tiny CLIP (2 layers of 32)",
        ("vision", "cpu"): "CLIP ViT-B/32 (151 M, random weights)",
        ("vision", "gpu"): "CLIP ViT-L/14 (428 M, random weights, bf16)",
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
