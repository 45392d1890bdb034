"""Finding the model folder and loading the model's processors.

`model` is a local folder, a hub id (resolved from the local cache, see the runtime's
prefetch), `builtin:<name>` for a built-in model (services/vision/builtin/), or empty for the
default built-in tiny CLIP. The older `tiny:<name>` spelling still works and logs a deprecation.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from services.runtime.builtin import ResolvedModel, deprecated_spelling, resolve_model
from services.vision.builtin import BUILTINS
from services.vision.config import VisionSettings

log = logging.getLogger("mmserve.vision")

# How built-ins were chosen before `builtin:<name>`; still accepted, with a deprecation warning.
OLD_PREFIX = "tiny:"

# The keys of a preprocessor_config.json that mean the same thing to BitImageProcessorPil
# (resize, optional center crop, rescale, normalize), the PIL fallback below.
_FALLBACK_KEYS = (
    "do_resize",
    "size",
    "resample",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
)


def resolve(settings: VisionSettings) -> ResolvedModel:
    """The configured model's folder and the id GetModelInfo reports."""
    model = settings.model.strip()
    if model.startswith(OLD_PREFIX):
        # An unknown old-style name then fails like an unknown `builtin:` one.
        model = deprecated_spelling(f"model {model!r}", model.removeprefix(OLD_PREFIX))
    if model != settings.model:
        settings = settings.model_copy(update={"model": model})
    return resolve_model(settings, BUILTINS)


def load_image_processor(folder: Path) -> Any:
    """The folder's image processor. Some (DINOv3's) exist only in a torchvision version; we do
    not install torchvision (it pulls another torch), so those fall back to a PIL processor with
    the same resize / crop / normalization settings."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(folder)
    except ImportError as exc:
        if "torchvision" not in str(exc).lower():
            raise
        reason = str(exc).strip().splitlines()[0]
        log.warning("image processor needs torchvision (%s); using a PIL equivalent", reason)
        return _pil_fallback(folder)


def _pil_fallback(folder: Path) -> Any:
    from transformers import BitImageProcessorPil

    config = _preprocessor_config(folder)
    kwargs = {key: config[key] for key in _FALLBACK_KEYS if config.get(key) is not None}
    # A missing do_center_crop means "no crop" for these processors; Bit's default is to crop.
    kwargs["do_center_crop"] = bool(config.get("do_center_crop") or False)
    kwargs["do_convert_rgb"] = True
    return BitImageProcessorPil(**kwargs)


def _preprocessor_config(folder: Path) -> dict[str, Any]:
    for name, key in (
        ("preprocessor_config.json", None),
        ("processor_config.json", "image_processor"),
    ):
        path = folder / name
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            section = data.get(key, {}) if key else data
            if isinstance(section, dict) and section:
                return section
    raise FileNotFoundError(f"{folder} has no image processor configuration")


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def image_side(processor: Any) -> int:
    """The square side the processor hands the model, in pixels (0 when it varies, as with
    SigLIP2's aspect-preserving patches)."""
    for attr in ("crop_size", "size"):
        if attr == "crop_size" and not getattr(processor, "do_center_crop", False):
            continue
        size = getattr(processor, attr, None)
        if size is None:
            continue
        if not isinstance(size, dict):
            size = dict(size.items()) if hasattr(size, "items") else vars(size)
        for key in ("height", "shortest_edge"):
            value = size.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return 0
