"""Sizes the tiny vision towers share: 32 px inputs in 8 px patches (16 patches) keep a forward
pass at a few milliseconds on one CPU core."""

from __future__ import annotations

TINY_IMAGE_SIZE = 32
TINY_PATCH_SIZE = 8
TINY_HIDDEN = 32
TINY_LAYERS = 2
TINY_HEADS = 2
TINY_INTERMEDIATE = 64

TOWER: dict[str, int] = {
    "hidden_size": TINY_HIDDEN,
    "intermediate_size": TINY_INTERMEDIATE,
    "num_hidden_layers": TINY_LAYERS,
    "num_attention_heads": TINY_HEADS,
}
VISION_TOWER: dict[str, int] = {
    **TOWER,
    "image_size": TINY_IMAGE_SIZE,
    "patch_size": TINY_PATCH_SIZE,
}
