"""Tiny Qwen2.5-VL and Qwen2-VL models for tests, benchmarks and the default local run.

Real architectures with random weights (no model hub is reachable here), the real Qwen BPE
vocabulary with each family's special tokens and chat template, and the real image processor,
saved with save_pretrained so the service loads them exactly like a downloaded checkpoint.
Built once per configuration and cached (services.runtime.model_cache).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.runtime.model_cache import cached_model_dir
from services.runtime.tokenizers import (
    QWEN25_EXTRA_SPECIALS,
    QWEN_VL_SPECIALS,
    QWEN_VOCAB_SIZE,
    qwen_tokenizer,
)
from services.vl.config import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS

# Bump when the builders change in a way the configs below do not show.
_TINY_VERSION = 1

FAMILIES = ("qwen2_5_vl", "qwen2_vl")
DEFAULT_FAMILY = "qwen2_5_vl"

ENDOFTEXT_ID = 151643
IM_END_ID = 151645
VISION_START_ID = 151652
VISION_END_ID = 151653
IMAGE_PAD_ID = 151655
VIDEO_PAD_ID = 151656

# The chat template Qwen2-VL-*-Instruct and Qwen2.5-VL-*-Instruct ship (chat_template.json).
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Model sizes. "tiny" is for tests (about 10 M parameters, mostly the 151,936-row embedding);
# "small" gives the benchmark per-token work that is not all Python overhead.
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden": 64, "intermediate": 128, "layers": 2, "heads": 4, "kv_heads": 2,
             "vision_hidden": 64, "vision_depth": 2, "context": 4096},
    "small": {"hidden": 256, "intermediate": 704, "layers": 4, "heads": 4, "kv_heads": 2,
              "vision_hidden": 128, "vision_depth": 4, "context": 8192},
}  # fmt: skip
# With transformers' default init (std 0.02) a random model repeats one token whatever it is
# shown; larger weights make its answers depend on the text and images, so tests can tell
# inputs (and their order) apart.
_INIT_STD = 0.3


def tiny_model_dir(family: str = DEFAULT_FAMILY, size: str = "tiny") -> Path:
    """The folder of a tiny `family` model ("qwen2_5_vl" or "qwen2_vl"), built if needed."""
    if family not in FAMILIES:
        raise ValueError(f"no tiny builder for family {family!r}; choose one of {FAMILIES}")
    if size not in SIZES:
        raise ValueError(f"unknown tiny model size {size!r}; choose one of {tuple(SIZES)}")
    spec = {"family": family, "size": dict(SIZES[size]), "version": _TINY_VERSION}
    return cached_model_dir(f"{family}-{size}", spec, lambda folder: build_model(folder, spec))


def tiny_qwen25_vl_dir() -> Path:
    return tiny_model_dir("qwen2_5_vl", "tiny")


def small_qwen25_vl_dir() -> Path:
    return tiny_model_dir("qwen2_5_vl", "small")


def tiny_qwen2_vl_dir() -> Path:
    return tiny_model_dir("qwen2_vl", "tiny")


def build_model(folder: Path, spec: dict[str, Any]) -> None:
    # Imported here: a cache hit should not pay for the model classes.
    from transformers import GenerationConfig
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    family: str = spec["family"]
    size: dict[str, int] = spec["size"]
    model = _model(family, size)
    model.generation_config = GenerationConfig(
        bos_token_id=ENDOFTEXT_ID, eos_token_id=[IM_END_ID, ENDOFTEXT_ID], pad_token_id=ENDOFTEXT_ID
    )
    model.save_pretrained(folder)
    specials = QWEN_VL_SPECIALS + (QWEN25_EXTRA_SPECIALS if family == "qwen2_5_vl" else ())
    tokenizer = qwen_tokenizer(
        specials, chat_template=QWEN_VL_CHAT_TEMPLATE, model_max_length=size["context"]
    )
    tokenizer.save_pretrained(folder)
    Qwen2VLImageProcessorPil(
        min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_MAX_PIXELS
    ).save_pretrained(folder)
    # Real checkpoints name their processor here; the service's loader reads it.
    config_path = folder / "preprocessor_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["processor_class"] = (
        "Qwen2_5_VLProcessor" if family == "qwen2_5_vl" else "Qwen2VLProcessor"
    )
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _rope(size: dict[str, int]) -> dict[str, Any]:
    # Multimodal RoPE splits each head's rotary half into temporal/height/width sections in
    # Qwen's 2:3:3 proportion (16/24/24 of 64 in the real models).
    half = size["hidden"] // size["heads"] // 2
    temporal = half // 4
    height = (half - temporal) // 2
    return {
        "rope_type": "default",
        "rope_theta": 1_000_000.0,
        "mrope_section": [temporal, height, half - temporal - height],
    }


def _text_config(size: dict[str, int]) -> dict[str, Any]:
    return {
        "vocab_size": QWEN_VOCAB_SIZE,
        "hidden_size": size["hidden"],
        "intermediate_size": size["intermediate"],
        "num_hidden_layers": size["layers"],
        "num_attention_heads": size["heads"],
        "num_key_value_heads": size["kv_heads"],
        "max_position_embeddings": size["context"],
        "rope_parameters": _rope(size),
        "tie_word_embeddings": True,
        "initializer_range": _INIT_STD,
        "bos_token_id": ENDOFTEXT_ID,
        "eos_token_id": IM_END_ID,
    }


def _model(family: str, size: dict[str, int]) -> Any:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    tokens = {
        "image_token_id": IMAGE_PAD_ID,
        "video_token_id": VIDEO_PAD_ID,
        "vision_start_token_id": VISION_START_ID,
        "vision_end_token_id": VISION_END_ID,
        "tie_word_embeddings": True,
        "initializer_range": _INIT_STD,
    }
    vision_common = {
        "depth": size["vision_depth"],
        "num_heads": 4,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "initializer_range": _INIT_STD,
    }
    if family == "qwen2_5_vl":
        config = Qwen2_5_VLConfig(
            text_config=_text_config(size),
            vision_config={
                **vision_common,
                "hidden_size": size["vision_hidden"],
                "intermediate_size": 2 * size["vision_hidden"],
                "out_hidden_size": size["hidden"],
                "window_size": 112,
                # Window attention everywhere but the last block, like the real 32-block tower.
                "fullatt_block_indexes": [size["vision_depth"] - 1],
            },
            **tokens,
        )
        return Qwen2_5_VLForConditionalGeneration(config).eval()
    config = Qwen2VLConfig(
        text_config=_text_config(size),
        vision_config={
            **vision_common,
            "embed_dim": size["vision_hidden"],
            "mlp_ratio": 2,
            "hidden_size": size["hidden"],
        },
        **tokens,
    )
    return Qwen2VLForConditionalGeneration(config).eval()
