"""The built-in tiny Qwen-Image pipeline: MMDiT, the Qwen-Image VAE, a Qwen2.5-VL text encoder
with the real Qwen2.5 tokenizer, flow matching, and the Qwen2-VL processor instruction edits
need (in processor/, where Qwen/Qwen-Image-Edit keeps it)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from services.runtime.model_cache import cached_model_dir
from services.runtime.tokenizers import QWEN_VL_SPECIALS, qwen_tokenizer
from services.t2i.builtin.common import remove_tree, tuples

QWEN_IMAGE_CONFIG: dict[str, Any] = {
    # sum(axes_dims_rope) == attention_head_dim; in_channels == vae z_dim * 2 * 2.
    "transformer": {
        "patch_size": 2,
        "in_channels": 16,
        "out_channels": 4,
        "num_layers": 2,
        "attention_head_dim": 16,
        "num_attention_heads": 3,
        "joint_attention_dim": 16,
        "guidance_embeds": False,
        "axes_dims_rope": [8, 4, 4],
    },
    "vae": {
        "base_dim": 24,
        "z_dim": 4,
        "dim_mult": [1, 2, 4],
        "num_res_blocks": 1,
        "temperal_downsample": [False, True],
        "latents_mean": [0.0] * 4,
        "latents_std": [1.0] * 4,
    },
    # The text model's hidden size is the transformer's joint_attention_dim.
    "text_encoder": {
        "text_config": {
            "vocab_size": 152064,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "rope_theta": 1e6,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
        },
        "vision_config": {
            "depth": 2,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": 16,
        },
        "tie_word_embeddings": True,
    },
    # The edit pipeline's processor (processor/, as in Qwen/Qwen-Image-Edit); a small pixel
    # budget keeps the vision tower's share of an edit cheap.
    "processor": {"min_pixels": 56 * 56, "max_pixels": 112 * 112},
}


def build_qwen_image(folder: Path, config: Mapping[str, Any] = QWEN_IMAGE_CONFIG) -> None:
    """A QwenImagePipeline with the real Qwen2.5 tokenizer, saved into `folder`."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2Tokenizer,
    )
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    # The runtime builds the real BPE; re-loading it as Qwen2Tokenizer gives the class the real
    # checkpoint's model_index.json names.
    work = folder / "_tokenizer"
    qwen_tokenizer(QWEN_VL_SPECIALS).save_pretrained(work)
    tokenizer = Qwen2Tokenizer.from_pretrained(work)
    pipe = QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=AutoencoderKLQwenImage(**config["vae"]).eval(),
        text_encoder=Qwen2_5_VLForConditionalGeneration(
            Qwen2_5_VLConfig(**json.loads(json.dumps(config["text_encoder"])))
        ).eval(),
        tokenizer=tokenizer,
        transformer=QwenImageTransformer2DModel(**tuples(config["transformer"])).eval(),
    )
    pipe.save_pretrained(folder)
    # Instruction edits (QwenImageEditPipeline) read the image through this processor.
    tokenizer.save_pretrained(folder / "processor")
    Qwen2VLImageProcessorPil(**config["processor"]).save_pretrained(folder / "processor")
    remove_tree(work)


def model_dir(config: Mapping[str, Any] | None = None) -> Path:
    """The built pipeline's folder (cached per config): the `builtin:qwen_image` model."""
    chosen = QWEN_IMAGE_CONFIG if config is None else config
    return cached_model_dir(
        "t2i-tiny-qwen_image", chosen, lambda folder: build_qwen_image(folder, chosen)
    )
