"""Built-in CLIP models: the tiny default and a ViT-B/32-sized one for benchmarks.

Both use the real CLIP BPE vocabulary (49,408 tokens, OpenAI's ids) from open-clip-torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.runtime.model_cache import cached_model_dir
from services.vision.builtin.sizes import TINY_IMAGE_SIZE, TOWER, VISION_TOWER

CLIP_CONTEXT = 77

# ViT-B/32 as OpenAI released it (transformers' CLIPConfig defaults): the benchmark's model.
CLIP_B32: dict[str, Any] = {
    "text_config": {
        "vocab_size": 49408,
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "max_position_embeddings": CLIP_CONTEXT,
    },
    "vision_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 224,
        "patch_size": 32,
    },
    "projection_dim": 512,
    "image_size": 224,
}

TINY_CLIP: dict[str, Any] = {
    "text_config": {**TOWER, "vocab_size": 49408, "max_position_embeddings": CLIP_CONTEXT},
    "vision_config": dict(VISION_TOWER),
    "projection_dim": 16,
    "image_size": TINY_IMAGE_SIZE,
}


def build_clip(folder: Path, spec: dict[str, Any]) -> None:
    """A CLIPModel with the real CLIP tokenizer and a CLIP image processor (resize the short
    side, center crop, CLIP mean/std), as openai/clip-* checkpoints ship them."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    from services.runtime.tokenizers import clip_tokenizer

    size = spec["image_size"]
    config = CLIPConfig(
        text_config=spec["text_config"],
        vision_config=spec["vision_config"],
        projection_dim=spec["projection_dim"],
    )
    CLIPModel(config).save_pretrained(folder)
    tokenizer = clip_tokenizer(folder, max_length=spec["text_config"]["max_position_embeddings"])
    images = CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)


def tiny_clip_dir() -> Path:
    """The default local model: a 2-layer CLIP with the real 49,408-token vocabulary."""
    return cached_model_dir("vision-tiny-clip", TINY_CLIP, lambda f: build_clip(f, TINY_CLIP))


def clip_b32_dir() -> Path:
    """A CLIP ViT-B/32-sized model with random weights (about 600 MB): for benchmarks."""
    return cached_model_dir("vision-clip-b32", CLIP_B32, lambda f: build_clip(f, CLIP_B32))
