"""Tiny random-weight pipelines of the real families, for tests, benchmarks and the default
local run (no model hub is reachable here).

Each builder uses the real component classes, configured as small as diffusers' own pipeline
tests configure them, with the real tokenizers where the family uses them (CLIP's BPE for Stable
Diffusion, Qwen2.5's BPE for Qwen-Image), saves the pipeline with `save_pretrained` and is cached
by `cached_model_dir`, so the service loads it through exactly the path real checkpoints take.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from services.runtime.model_cache import cached_model_dir
from services.runtime.tokenizers import clip_tokenizer, qwen_tokenizer

# --- Stable Diffusion (UNet + AutoencoderKL + CLIP text encoder + DDIM) ----------------------

SD_CONFIG: dict[str, Any] = {
    "unet": {
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    "vae": {
        "block_out_channels": [32, 64],
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 64,
    },
    "text_encoder": {
        "vocab_size": 49408,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "projection_dim": 32,
    },
    "scheduler": {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    },
}


def build_stable_diffusion(folder: Path, config: Mapping[str, Any] = SD_CONFIG) -> None:
    """A StableDiffusionPipeline with the real CLIP tokenizer, saved into `folder`."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel(**_tuples(config["unet"])),
        vae=AutoencoderKL(**_tuples(config["vae"])),
        text_encoder=CLIPTextModel(CLIPTextConfig(**config["text_encoder"])).eval(),
        tokenizer=clip_tokenizer(folder / "_clip_vocab"),
        scheduler=DDIMScheduler(**config["scheduler"]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    _remove_tree(folder / "_clip_vocab")


# --- HunyuanDiT (DiT + AutoencoderKL + BERT and T5 text encoders) ---------------------------

# Words for the tiny BERT WordPiece vocabulary; unknown words map to [UNK], which is what a
# random-weight model needs (the real checkpoint ships its own 47k-token Chinese/English vocab).
_BERT_TEXT = (
    "a an the of on in with and cat dog fox red blue green white black painting photo "
    "squirrel eating burger house tree sky snow mountain river city night sun"
)
# A small unigram vocabulary for the T5 tokenizer (the real one is mT5's 250k sentencepiece
# model); built directly with the tokenizers library, so sentencepiece is not needed.
_T5_PIECES = ("▁a", "▁the", "▁of", "▁cat", "▁dog", "▁red", "▁blue", "▁in", "▁on", "s", "e")

HUNYUAN_CONFIG: dict[str, Any] = {
    "transformer": {
        "sample_size": 16,
        "num_layers": 2,
        "patch_size": 2,
        "attention_head_dim": 8,
        "num_attention_heads": 3,
        "in_channels": 4,
        "cross_attention_dim": 32,
        "cross_attention_dim_t5": 32,
        "pooled_projection_dim": 16,
        "hidden_size": 24,
        "activation_fn": "gelu-approximate",
    },
    # The pipeline computes its rotary grid as height // 8 // patch_size, so the VAE must
    # downsample by exactly 8: four blocks.
    "vae": {
        "block_out_channels": [8, 8, 16, 16],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 4,
    },
    # BERT's hidden size is the DiT's cross_attention_dim; the pipeline pads prompts to 77.
    "text_encoder": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 37,
        "max_position_embeddings": 128,
    },
    "text_encoder_2": {"d_model": 32, "d_kv": 8, "d_ff": 37, "num_layers": 2, "num_heads": 4},
    "bert_words": _BERT_TEXT.split(),
    "t5_pieces": list(_T5_PIECES),
}


def build_hunyuan_dit(folder: Path, config: Mapping[str, Any] = HUNYUAN_CONFIG) -> None:
    """A HunyuanDiTPipeline with BERT and T5 tokenizers, saved into `folder`."""
    from diffusers import AutoencoderKL, DDPMScheduler, HunyuanDiT2DModel, HunyuanDiTPipeline
    from transformers import BertConfig, BertModel, BertTokenizer, T5Config, T5EncoderModel

    work = folder / "_vocab"
    work.mkdir(parents=True, exist_ok=True)
    vocab = work / "vocab.txt"
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab.write_text("\n".join([*specials, *config["bert_words"]]) + "\n", encoding="utf-8")
    # transformers 5 reads the file from `vocab=`; `vocab_file=` would be silently ignored.
    tokenizer = BertTokenizer(vocab=str(vocab))
    tokenizer_2 = _t5_tokenizer(config["t5_pieces"])
    pipe = HunyuanDiTPipeline(
        vae=AutoencoderKL(**_tuples(config["vae"])).eval(),
        text_encoder=BertModel(
            BertConfig(vocab_size=len(tokenizer), **config["text_encoder"])
        ).eval(),
        tokenizer=tokenizer,
        transformer=HunyuanDiT2DModel(**config["transformer"]).eval(),
        scheduler=DDPMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        text_encoder_2=T5EncoderModel(
            T5Config(vocab_size=len(tokenizer_2), **config["text_encoder_2"])
        ).eval(),
        tokenizer_2=tokenizer_2,
    )
    pipe.save_pretrained(folder)
    _remove_tree(work)


def _t5_tokenizer(pieces: list[str]) -> Any:
    from transformers import T5Tokenizer

    # T5's own special pieces first (pad 0, eos 1, unk 2), then the words, then single
    # characters so any text tokenizes; scores make whole words win over characters.
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(piece, -1.0) for piece in pieces]
    vocab += [(letter, -5.0) for letter in letters if letter not in pieces]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


# --- Qwen-Image (MMDiT + Qwen VAE + Qwen2.5-VL text encoder, flow matching) -----------------

# The Qwen2.5-VL special tokens in their official order (ids 151643 on).
QWEN_VL_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

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

    # The runtime builds the real BPE; re-loading it as Qwen2Tokenizer gives the class the real
    # checkpoint's model_index.json names.
    work = folder / "_tokenizer"
    qwen_tokenizer(QWEN_VL_SPECIALS).save_pretrained(work)
    tokenizer = Qwen2Tokenizer.from_pretrained(work)
    transformer_config = dict(config["transformer"])
    transformer_config["axes_dims_rope"] = tuple(transformer_config["axes_dims_rope"])
    pipe = QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=AutoencoderKLQwenImage(**config["vae"]).eval(),
        text_encoder=Qwen2_5_VLForConditionalGeneration(
            Qwen2_5_VLConfig(**json.loads(json.dumps(config["text_encoder"])))
        ).eval(),
        tokenizer=tokenizer,
        transformer=QwenImageTransformer2DModel(**transformer_config).eval(),
    )
    pipe.save_pretrained(folder)
    _remove_tree(work)


# --- registry ---------------------------------------------------------------------------------

TINY_MODELS: dict[str, tuple[Mapping[str, Any], Callable[[Path, Mapping[str, Any]], None]]] = {
    "stable_diffusion": (SD_CONFIG, build_stable_diffusion),
    "hunyuan_dit": (HUNYUAN_CONFIG, build_hunyuan_dit),
    "qwen_image": (QWEN_IMAGE_CONFIG, build_qwen_image),
}


def tiny_model_dir(
    family: str = "stable_diffusion", config: Mapping[str, Any] | None = None
) -> Path:
    """The folder of the tiny pipeline of `family`, built once per config and cached."""
    try:
        default_config, build = TINY_MODELS[family]
    except KeyError:
        raise ValueError(
            f"no tiny model for family {family!r}; use one of {', '.join(TINY_MODELS)}"
        ) from None
    chosen = default_config if config is None else config
    return cached_model_dir(f"t2i-tiny-{family}", chosen, lambda folder: build(folder, chosen))


def _tuples(config: Mapping[str, Any]) -> dict[str, Any]:
    # diffusers model configs take tuples where JSON (and the cache key) has lists.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
