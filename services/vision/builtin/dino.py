"""Built-in DINOv2 and DINOv3 models (image only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.runtime.model_cache import cached_model_dir
from services.vision.builtin.sizes import TINY_IMAGE_SIZE, TINY_PATCH_SIZE, TOWER

TINY_DINOV2: dict[str, Any] = {
    **TOWER,
    "image_size": TINY_IMAGE_SIZE,
    "patch_size": TINY_PATCH_SIZE,
    "resize": 36,  # DINOv2 resizes the short side to 256 and crops 224: the same ratio
}

TINY_DINOV3: dict[str, Any] = {
    **TOWER,
    "image_size": TINY_IMAGE_SIZE,
    "patch_size": TINY_PATCH_SIZE,
    "num_register_tokens": 2,
}


def build_dinov2(folder: Path, spec: dict[str, Any]) -> None:
    """A Dinov2Model with the BitImageProcessor facebook/dinov2-* checkpoints use."""
    from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=spec["hidden_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        mlp_ratio=spec["intermediate_size"] // spec["hidden_size"],
        image_size=spec["image_size"],
        patch_size=spec["patch_size"],
    )
    Dinov2Model(config).save_pretrained(folder)
    size = spec["image_size"]
    BitImageProcessorPil(
        size={"shortest_edge": spec["resize"]},
        crop_size={"height": size, "width": size},
        do_center_crop=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        resample=3,
    ).save_pretrained(folder)


def build_dinov3(folder: Path, spec: dict[str, Any]) -> None:
    """A DINOv3ViTModel (with register tokens). Its image processor needs torchvision, which we
    cannot install, so its preprocessor_config.json is written as facebook/dinov3-* ship it;
    the engine falls back to an equivalent PIL processor when torchvision is missing."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    config = DINOv3ViTConfig(
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        image_size=spec["image_size"],
        patch_size=spec["patch_size"],
        num_register_tokens=spec["num_register_tokens"],
    )
    DINOv3ViTModel(config).save_pretrained(folder)
    size = spec["image_size"]
    preprocessor = {
        "image_processor_type": "DINOv3ViTImageProcessorFast",
        "do_resize": True,
        "size": {"height": size, "width": size},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")


def tiny_dinov2_dir() -> Path:
    return cached_model_dir(
        "vision-tiny-dinov2", TINY_DINOV2, lambda f: build_dinov2(f, TINY_DINOV2)
    )


def tiny_dinov3_dir() -> Path:
    return cached_model_dir(
        "vision-tiny-dinov3", TINY_DINOV3, lambda f: build_dinov3(f, TINY_DINOV3)
    )
