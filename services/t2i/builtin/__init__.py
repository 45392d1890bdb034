"""The t2i built-in models: tiny random-weight pipelines of the real families, for tests,
benchmarks and the default local run (no model hub is reachable here).

Each builder uses the real component classes, configured as small as diffusers' own pipeline
tests configure them, with the real tokenizers where the family uses them (CLIP's BPE for Stable
Diffusion, Qwen2.5's BPE for Qwen-Image), saves the pipeline with `save_pretrained` and is cached
by `cached_model_dir`, so the service loads it through exactly the path real checkpoints take.
Nothing here imports torch or diffusers until a model is built: `--help` stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from services.runtime.builtin import BuiltinModel, BuiltinModels

DEFAULT_FAMILY = "stable_diffusion"

BUILTINS = BuiltinModels(
    (
        BuiltinModel(
            "stable_diffusion",
            "services.t2i.builtin.stable_diffusion:model_dir",
            "tiny Stable Diffusion (UNet, CLIP text encoder and tokenizer, DDIM)",
        ),
        BuiltinModel(
            "hunyuan_dit",
            "services.t2i.builtin.hunyuan_dit:model_dir",
            "tiny HunyuanDiT (DiT, BERT and T5 text encoders; no image-to-image)",
        ),
        BuiltinModel(
            "qwen_image",
            "services.t2i.builtin.qwen_image:model_dir",
            "tiny Qwen-Image (MMDiT, Qwen2.5-VL text encoder and tokenizer)",
        ),
    ),
    default=DEFAULT_FAMILY,
)


def tiny_model_dir(family: str = DEFAULT_FAMILY, config: Mapping[str, Any] | None = None) -> Path:
    """The folder of `family`'s tiny pipeline, built once per config and cached; `config`
    replaces the family's own (the benchmarks build larger pipelines of the same classes)."""
    module, _, _ = BUILTINS.get(family).builder.partition(":")
    make: Callable[[Mapping[str, Any] | None], Path] = importlib.import_module(module).model_dir
    return make(config)
