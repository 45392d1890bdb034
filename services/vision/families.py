"""What the service must know about a model family, read from the loaded model itself.

A dual encoder (CLIP, SigLIP, SigLIP2) has `get_image_features` and `get_text_features`; an
image-only backbone (DINOv2, DINOv3) takes `pixel_values` and returns token states. The few
family habits that cannot be read off the classes are keyed by `model_type` (from config.json)
with a generic default, so a new CLIP-like family works without a code change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Activation = Literal["softmax", "sigmoid", ""]
Padding = Literal["longest", "max_length"]

# SigLIP models were trained on texts padded to their full context; padding shorter changes
# their embeddings (HF's model cards say to pass padding="max_length").
_MAX_LENGTH_PADDING = frozenset({"siglip", "siglip2"})


@dataclass(frozen=True)
class Family:
    name: str  # transformers' model_type, e.g. "clip", "siglip", "dinov2", "dinov3_vit"
    supports_text: bool
    # How zero-shot scores are made: softmax over labels (CLIP's contrastive loss) or an
    # independent sigmoid per label (SigLIP's pairwise loss, with its learned bias).
    activation: Activation
    text_padding: Padding
    # Tokens between the class token and the patch tokens (DINOv2-with-registers, DINOv3).
    register_tokens: int


class UnsupportedModel(ValueError):
    """The folder holds a model this service cannot embed with."""


def describe(model_type: str, model: Any) -> Family:
    """The family facts of a loaded transformers model."""
    if callable(getattr(model, "get_image_features", None)) and callable(
        getattr(model, "get_text_features", None)
    ):
        return Family(
            name=model_type,
            supports_text=True,
            activation="sigmoid" if getattr(model, "logit_bias", None) is not None else "softmax",
            text_padding="max_length" if model_type in _MAX_LENGTH_PADDING else "longest",
            register_tokens=0,
        )
    if getattr(model, "main_input_name", None) == "pixel_values":
        return Family(
            name=model_type,
            supports_text=False,
            activation="",
            text_padding="longest",
            register_tokens=int(getattr(model.config, "num_register_tokens", 0) or 0),
        )
    raise UnsupportedModel(
        f"{type(model).__name__} ({model_type}) is neither an image-text dual encoder "
        "(CLIP, SigLIP) nor an image backbone (DINOv2, DINOv3)"
    )
