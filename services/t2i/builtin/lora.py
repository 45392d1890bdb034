"""Tiny LoRA adapters for the built-in Stable Diffusion and Qwen-Image pipelines, for tests and
trying `--lora-dir` offline.

Each adapter is made the way a trainer makes one: peft LoRA layers added to the denoiser (and,
for some, the CLIP text encoder), their state dict taken with `get_peft_model_state_dict`, saved
with diffusers' `save_lora_weights` as `<name>.safetensors`. The LoRA matrices keep random
values (peft zero-initialises B by default, which would make an adapter a no-op), so every
adapter visibly changes the image. Cached like the models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.runtime.model_cache import cached_model_dir

# name -> (seed, rank, also the text encoder)
ADAPTERS: dict[str, tuple[int, int, bool]] = {
    "ink": (11, 4, True),
    "paper": (23, 2, False),
}
_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
_TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def build_sd_loras(folder: Path, base: Path) -> None:
    """One `<name>.safetensors` per entry of ADAPTERS, for the SD pipeline in `base`."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModel

    folder.mkdir(parents=True, exist_ok=True)
    for name, (seed, rank, text) in ADAPTERS.items():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_pretrained(base / "unet")
        unet.add_adapter(_config(LoraConfig, rank, _UNET_TARGETS))
        layers: dict[str, Any] = {"unet_lora_layers": get_peft_model_state_dict(unet)}
        if text:
            encoder = CLIPTextModel.from_pretrained(base / "text_encoder")
            encoder.add_adapter(_config(LoraConfig, rank, _TEXT_TARGETS))
            layers["text_encoder_lora_layers"] = get_peft_model_state_dict(encoder)
        StableDiffusionPipeline.save_lora_weights(
            folder, weight_name=f"{name}.safetensors", **layers
        )


def build_qwen_loras(folder: Path, base: Path) -> None:
    """`glow.safetensors`: a LoRA on the Qwen-Image transformer's attention projections."""
    import torch
    from diffusers import QwenImagePipeline, QwenImageTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(31)
    transformer = QwenImageTransformer2DModel.from_pretrained(base / "transformer")
    transformer.add_adapter(_config(LoraConfig, 4, _UNET_TARGETS))
    QwenImagePipeline.save_lora_weights(
        folder,
        weight_name="glow.safetensors",
        transformer_lora_layers=get_peft_model_state_dict(transformer),
    )


def _config(cls: Any, rank: int, targets: list[str]) -> Any:
    return cls(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False)


def sd_lora_dir() -> Path:
    """The adapters' folder (cached), for the `builtin:stable_diffusion` model."""
    from services.t2i.builtin.stable_diffusion import SD_CONFIG, model_dir

    base = model_dir()
    config = {"base": SD_CONFIG, "adapters": ADAPTERS, "unet": _UNET_TARGETS, "text": _TEXT_TARGETS}
    return cached_model_dir("t2i-tiny-sd-loras", config, lambda f: build_sd_loras(f, base))


def qwen_lora_dir() -> Path:
    """A folder with one adapter (`glow`) for the `builtin:qwen_image` model (cached)."""
    from services.t2i.builtin.qwen_image import model_dir

    base = model_dir()
    config = {"base": str(base.name), "adapter": "glow", "seed": 31, "targets": _UNET_TARGETS}
    return cached_model_dir("t2i-tiny-qwen-loras", config, lambda f: build_qwen_loras(f, base))
