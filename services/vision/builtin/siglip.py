"""Built-in SigLIP and SigLIP2 models.

SigLIP/SigLIP2's real tokenizers are SentencePiece/Gemma models that no PyPI package ships. We
train a small Unigram model (the algorithm SentencePiece uses, with its Metaspace pre-tokenizer
and SigLIP's "sticky" </s> at the end) with the `tokenizers` library on a few sentences, so the
vocabulary is honest about being tiny and made up. Real checkpoints bring their own tokenizer
files.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

from services.runtime.model_cache import cached_model_dir
from services.vision.builtin.sizes import TINY_IMAGE_SIZE, TOWER, VISION_TOWER

# SigLIP's text context (64 in real checkpoints) is kept short so truncation is easy to reach.
TINY_SIGLIP_CONTEXT = 16

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
    "text_config": dict(TOWER),
    "vision_config": dict(VISION_TOWER),
}

# Siglip2Processor imposes its own call defaults (16 px patches, at most 256 of them, texts
# padded to 64 tokens) over the saved processor config, so the tiny model takes those sizes.
TINY_SIGLIP2: dict[str, Any] = {
    "vocab_size": 256,
    "context": 64,
    "max_num_patches": 256,
    "text_config": dict(TOWER),
    "vision_config": {**TOWER, "patch_size": 16, "num_patches": 256},
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
