"""Tiny random-weight embedding models with the real architectures, for tests, benchmarks and
the default local run (no model hub is reachable here).

Each builder saves the model with `save_pretrained` and its processor with
`processor.save_pretrained`, so the service loads them through the very code path it uses for
real checkpoints. `cached_model_dir` builds each one once per config (seeded, so the weights are
the same on every machine).

Tokenizers:
- CLIP uses the real CLIP BPE vocabulary (49,408 tokens, OpenAI's ids) from open-clip-torch.
- SigLIP/SigLIP2's real tokenizers are SentencePiece/Gemma models that no PyPI package ships.
  We train a small Unigram model (the algorithm SentencePiece uses, with its Metaspace
  pre-tokenizer and SigLIP's "sticky" </s> at the end) with the `tokenizers` library on a few
  sentences, so the vocabulary is honest about being tiny and made up. Real checkpoints bring
  their own tokenizer files.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.runtime.model_cache import cached_model_dir

# Sizes shared by the tiny vision towers: 32 px inputs in 8 px patches (16 patches) keep a
# forward pass at a few milliseconds on one CPU core.
TINY_IMAGE_SIZE = 32
TINY_PATCH_SIZE = 8
TINY_HIDDEN = 32
TINY_LAYERS = 2
TINY_HEADS = 2
TINY_INTERMEDIATE = 64
# SigLIP's text context (64 in real checkpoints) is kept short so truncation is easy to reach.
TINY_SIGLIP_CONTEXT = 16
CLIP_CONTEXT = 77

_TOWER: dict[str, int] = {
    "hidden_size": TINY_HIDDEN,
    "intermediate_size": TINY_INTERMEDIATE,
    "num_hidden_layers": TINY_LAYERS,
    "num_attention_heads": TINY_HEADS,
}
_VISION: dict[str, int] = {**_TOWER, "image_size": TINY_IMAGE_SIZE, "patch_size": TINY_PATCH_SIZE}

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
    "text_config": {**_TOWER, "vocab_size": 49408, "max_position_embeddings": CLIP_CONTEXT},
    "vision_config": dict(_VISION),
    "projection_dim": 16,
    "image_size": TINY_IMAGE_SIZE,
}


# --- CLIP ------------------------------------------------------------------------------------


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


# --- SigLIP / SigLIP2 ------------------------------------------------------------------------

_COLORS = ("red", "green", "blue", "yellow", "black", "white", "orange", "purple", "brown", "grey")
_THINGS = (
    "cat",
    "dog",
    "bird",
    "horse",
    "car",
    "bicycle",
    "boat",
    "airplane",
    "house",
    "tree",
    "flower",
    "person",
    "square",
    "circle",
    "mountain",
    "river",
)
_FRAMES = (
    "a photo of a {} {}.",
    "a drawing of the {} {}",
    "two {} {}s on the beach",
    "a close-up picture of my {} {}",
    "an old {} {} in the city at night",
)
SIGLIP_SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in SigLIP's SentencePiece model


def _tokenizer_corpus() -> list[str]:
    return [
        frame.format(color, thing)
        for frame, color, thing in itertools.product(_FRAMES, _COLORS, _THINGS)
    ]


def siglip_tokenizer(vocab_size: int, context: int) -> Any:
    """A small Unigram tokenizer shaped like SigLIP's: lowercased, Metaspace word boundaries,
    </s> appended to every text and used as padding (SigLIP pads to its full context)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.Unigram())
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = UnigramTrainer(
        vocab_size=vocab_size, special_tokens=list(SIGLIP_SPECIALS), unk_token="<unk>"
    )
    backend.train_from_iterator(_tokenizer_corpus(), trainer)
    eos = backend.token_to_id("</s>")
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="</s>",
        pad_token="</s>",
        unk_token="<unk>",
        model_max_length=context,
    )


TINY_SIGLIP: dict[str, Any] = {
    "vocab_size": 256,
    "context": TINY_SIGLIP_CONTEXT,
    "image_size": TINY_IMAGE_SIZE,
    "text_config": dict(_TOWER),
    "vision_config": dict(_VISION),
}

# Siglip2Processor imposes its own call defaults (16 px patches, at most 256 of them, texts
# padded to 64 tokens) over the saved processor config, so the tiny model takes those sizes.
TINY_SIGLIP2: dict[str, Any] = {
    "vocab_size": 256,
    "context": 64,
    "max_num_patches": 256,
    "text_config": dict(_TOWER),
    "vision_config": {**_TOWER, "patch_size": 16, "num_patches": 256},
}


def _siglip_text_config(spec: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    eos = tokenizer.convert_tokens_to_ids("</s>")
    return {
        **spec["text_config"],
        "vocab_size": len(tokenizer),
        "max_position_embeddings": spec["context"],
        "pad_token_id": eos,
        "bos_token_id": eos,
        "eos_token_id": eos,
    }


def _set_siglip_logits(model: Any) -> None:
    # SigLIP's own initialisation (log 10 scale, -10 bias): random-weight models then give
    # the small sigmoid probabilities a freshly initialised SigLIP gives, not 0.5 everywhere.
    import torch

    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)


def build_siglip(folder: Path, spec: dict[str, Any]) -> None:
    """A SiglipModel with a SigLIP image processor (plain resize, mean/std 0.5)."""
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor

    tokenizer = siglip_tokenizer(spec["vocab_size"], spec["context"])
    config = SiglipConfig(
        text_config=_siglip_text_config(spec, tokenizer), vision_config=spec["vision_config"]
    )
    model = SiglipModel(config)
    _set_siglip_logits(model)
    model.save_pretrained(folder)
    size = spec["image_size"]
    images = SiglipImageProcessorPil(size={"height": size, "width": size})
    SiglipProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)


def build_siglip2(folder: Path, spec: dict[str, Any]) -> None:
    """A Siglip2Model (NaFlex: aspect-preserving patches up to max_num_patches)."""
    from transformers import (
        Siglip2Config,
        Siglip2ImageProcessorPil,
        Siglip2Model,
        Siglip2Processor,
    )

    tokenizer = siglip_tokenizer(spec["vocab_size"], spec["context"])
    config = Siglip2Config(
        text_config=_siglip_text_config(spec, tokenizer), vision_config=spec["vision_config"]
    )
    model = Siglip2Model(config)
    _set_siglip_logits(model)
    model.save_pretrained(folder)
    images = Siglip2ImageProcessorPil(
        patch_size=spec["vision_config"]["patch_size"], max_num_patches=spec["max_num_patches"]
    )
    Siglip2Processor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)


def tiny_siglip_dir() -> Path:
    return cached_model_dir(
        "vision-tiny-siglip", TINY_SIGLIP, lambda f: build_siglip(f, TINY_SIGLIP)
    )


def tiny_siglip2_dir() -> Path:
    return cached_model_dir(
        "vision-tiny-siglip2", TINY_SIGLIP2, lambda f: build_siglip2(f, TINY_SIGLIP2)
    )


# --- DINOv2 / DINOv3 (image only) ------------------------------------------------------------

TINY_DINOV2: dict[str, Any] = {
    **_TOWER,
    "image_size": TINY_IMAGE_SIZE,
    "patch_size": TINY_PATCH_SIZE,
    "resize": 36,  # DINOv2 resizes the short side to 256 and crops 224: the same ratio
}

TINY_DINOV3: dict[str, Any] = {
    **_TOWER,
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


TINY_MODELS: dict[str, Callable[[], Path]] = {
    "clip": tiny_clip_dir,
    "siglip": tiny_siglip_dir,
    "siglip2": tiny_siglip2_dir,
    "dinov2": tiny_dinov2_dir,
    "dinov3": tiny_dinov3_dir,
}
