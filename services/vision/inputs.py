"""Model inputs, prepared on the CPU pool before a job is queued, and their padding.

Preparing (image processor, tokenizer) off the device thread is what lets decode and
preprocessing of the next requests overlap the forward pass of the current batch.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from PIL import Image

from services.vision.pixels import PixelTransform, run_processor

Pooling = Literal["cls", "mean"]


@dataclass(frozen=True)
class ImageInputs:
    """What the image processor made of N images: tensors with a leading batch dimension
    (pixel_values, plus pixel_attention_mask and spatial_shapes for SigLIP2). When the engine
    preprocesses in the batch (CPU devices), `tensors` stays empty until then and `deferred`
    holds the decoded images."""

    tensors: dict[str, torch.Tensor]
    count: int
    deferred: tuple[Image.Image, ...] = ()


@dataclass(frozen=True)
class TextInputs:
    """Token ids of N texts, already cut to the model's context; padding happens per batch."""

    ids: list[list[int]]
    truncated: list[bool]

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def tokens(self) -> int:
        return sum(len(ids) for ids in self.ids)


@dataclass(frozen=True)
class ImageJob:
    """One request's part of an image micro-batch: its inputs and how to pool them (DINO)."""

    inputs: ImageInputs
    pooling: Pooling


def prepare_images(
    preprocessor: PixelTransform | Any, images: Sequence[Image.Image]
) -> ImageInputs:
    """Resizes, crops and normalizes decoded RGB images with the engine's verified
    `PixelTransform` or, when it has none, the model's image processor."""
    if isinstance(preprocessor, PixelTransform):
        return ImageInputs(preprocessor(images), len(images))
    return ImageInputs(run_processor(preprocessor, images), len(images))


class TextPreparer:
    """Tokenizes texts with truncation to the model's context, and reports which were cut.

    Fast (Rust) tokenizers change their truncation state on every call and raise "Already
    borrowed" when two threads do so at once, so calls are serialized; tokenizing is cheap."""

    def __init__(self, tokenizer: Any, context: int) -> None:
        self.tokenizer = tokenizer
        self.context = context
        self._lock = threading.Lock()

    def __call__(self, texts: Sequence[str]) -> TextInputs:
        with self._lock:
            full = self.tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]
            truncated = [len(ids) > self.context for ids in full]
            if not any(truncated):
                return TextInputs([list(ids) for ids in full], truncated)
            # The tokenizer's own truncation keeps its special tokens (CLIP's end token,
            # SigLIP's </s>), which the models pool on.
            cut = self.tokenizer(
                list(texts), truncation=True, max_length=self.context, verbose=False
            )["input_ids"]
        return TextInputs([list(ids) for ids in cut], truncated)


@dataclass(frozen=True)
class Padder:
    """Pads a batch of token id lists the way the family expects: to the longest text (CLIP,
    whose pooling reads the end token, so padding does not change it) or to the full context
    (SigLIP). Done by hand, not with tokenizer.pad, so the device thread never touches the
    tokenizer the CPU pool is using."""

    pad_id: int
    context: int
    mode: Literal["longest", "max_length"]
    left: bool
    with_mask: bool

    def __call__(self, rows: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        length = self.context if self.mode == "max_length" else max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for row, tokens in enumerate(rows):
            values = torch.tensor(list(tokens), dtype=torch.long)
            span = slice(length - len(tokens), length) if self.left else slice(0, len(tokens))
            ids[row, span] = values
            mask[row, span] = 1
        batch = {"input_ids": ids}
        if self.with_mask:
            batch["attention_mask"] = mask
        return batch
