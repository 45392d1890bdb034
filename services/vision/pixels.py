"""Image preprocessing that skips the image processor's numpy round trips, kept only when it is
verified equal to the processor at load.

transformers' PIL-backend image processors turn each decoded image into a numpy array, back into
a PIL image to resize it, into an array again, rescale it in float64 and normalize it in float32.
The pixels go through exactly one PIL operation (the resize); cropping only picks pixels, and
everything after the crop is a function of (channel, uint8 value). `PixelTransform` therefore
runs the same PIL resize on the decoded image, crops with PIL, and maps each uint8 value through
a 256-entry table per channel that was computed with the processor's own arithmetic.

Nothing here is trusted by construction: `verified_transform` runs the processor and the
transform on probe images at load and keeps the transform only if every output agrees.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

log = logging.getLogger("mmserve.vision")

# Largest difference accepted between the transform and the processor on any probe value.
TOLERANCE = 1e-6

# Processor attributes the transform reproduces.
_HANDLED = frozenset(
    {
        "do_convert_rgb",
        "do_resize",
        "size",
        "resample",
        "do_center_crop",
        "crop_size",
        "do_rescale",
        "rescale_factor",
        "do_normalize",
        "image_mean",
        "image_std",
        "do_pad",
    }
)
# Attributes that do not change a PIL backend's output for PIL inputs and `return_tensors="pt"`:
# already folded into `size` at init (default_to_square), read only when padding (pad_size),
# torchvision-only (device, disable_grouping), or for the text side (image_seq_length).
_INERT = frozenset(
    {
        "default_to_square",
        "pad_size",
        "return_tensors",
        "device",
        "disable_grouping",
        "image_seq_length",
    }
)
# The methods between `processor(images=...)` and the pixel values; a class that overrides any
# of them (SigLIP2's patches, for one) computes something this module does not reproduce.
_PIPELINE = (
    "__call__",
    "preprocess",
    "_standardize_kwargs",
    "_preprocess_image_like_inputs",
    "_prepare_image_like_inputs",
    "_prepare_images_structure",
    "fetch_images",
    "process_image",
    "convert_to_rgb",
    "_preprocess",
    "resize",
    "center_crop",
    "rescale",
    "normalize",
)
_SIZE_KEYS = (
    "height",
    "width",
    "longest_edge",
    "shortest_edge",
    "max_height",
    "max_width",
    "min_pixels",
    "max_pixels",
)
_CHANNELS = 3


@dataclass(frozen=True)
class Declined:
    """Why the transform cannot stand in for a processor; the processor is used instead."""

    reason: str


class _Unsupported(Exception):
    """A processor setting the transform does not reproduce (becomes a `Declined`)."""


def run_processor(processor: Any, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
    """The processor's tensors for decoded images, called the one way the service calls it."""
    batch = processor(images=list(images), return_tensors="pt")
    return {key: value for key, value in batch.items() if isinstance(value, torch.Tensor)}


@dataclass(frozen=True)
class _Resize:
    """The PIL backend's output size rule: the short side to `shortest_edge` (the long side
    truncated as `get_resize_output_image_size` does), else the fixed (width, height)."""

    shortest_edge: int | None
    fixed: tuple[int, int] = (0, 0)

    def output(self, width: int, height: int) -> tuple[int, int]:
        """(width, height), PIL's order."""
        if self.shortest_edge is None:
            return self.fixed
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.shortest_edge * long / short)
        if width <= height:
            return self.shortest_edge, new_long
        return new_long, self.shortest_edge


@dataclass(frozen=True, eq=False)
class PixelTransform:
    """Resize, center crop, rescale and normalize of an RGB PIL image, as the processor does it,
    producing float32 (N, 3, H, W) `pixel_values`. Images it cannot take exactly (not plain RGB,
    or batches whose outputs differ in size) go to the processor it was built from."""

    processor: Any
    resize: _Resize | None
    resample: Image.Resampling
    crop: tuple[int, int] | None  # (height, width)
    table: np.ndarray  # (3, 256) float32: the output value of each uint8 value, per channel

    @classmethod
    def from_processor(cls, processor: Any) -> PixelTransform | Declined:
        try:
            _check_pipeline(processor)
            return cls(
                processor=processor,
                resize=_resize_rule(processor),
                resample=_resample(processor),
                crop=_crop_size(processor),
                table=_value_table(processor),
            )
        except _Unsupported as exc:
            return Declined(str(exc))

    def __call__(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        if not images or not all(_plain_rgb(image) for image in images):
            return run_processor(self.processor, images)
        if len({self.output_size(image) for image in images}) > 1:
            return run_processor(self.processor, images)
        return {"pixel_values": self.pixel_values(images)}

    def output_size(self, image: Image.Image) -> tuple[int, int]:
        """(width, height) of the image's pixel values."""
        if self.crop is not None:
            return self.crop[1], self.crop[0]
        return self.resize.output(*image.size) if self.resize is not None else image.size

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The fast path itself, for RGB images whose outputs share one size."""
        width, height = self.output_size(images[0])
        out = torch.empty((len(images), _CHANNELS, height, width), dtype=torch.float32)
        planes = out.numpy()
        for index, image in enumerate(images):
            pixels = np.asarray(self.cropped(self.resized(image)))
            for channel, values in enumerate(self.table):
                # mode="clip" skips numpy's buffered bounds check; uint8 indices are in range.
                values.take(pixels[..., channel], out=planes[index, channel], mode="clip")
        return out

    def resized(self, image: Image.Image) -> Image.Image:
        if self.resize is None:
            return image
        return image.resize(self.resize.output(*image.size), resample=self.resample)

    def cropped(self, image: Image.Image) -> Image.Image:
        if self.crop is None:
            return image
        return image.crop(center_crop_box(image.size, self.crop))


def center_crop_box(size: tuple[int, int], crop: tuple[int, int]) -> tuple[int, int, int, int]:
    """PIL box of transformers' `center_crop` for a (width, height) image and a (height, width)
    crop. Where the image is smaller, transformers pads it with zeros, ceil(missing / 2) before;
    the window it then takes starts (image - crop) // 2 from the image's edge, which is this box,
    and PIL fills the part of a box outside the image with zeros too."""
    width, height = size
    crop_height, crop_width = crop
    left = (width - crop_width) // 2
    top = (height - crop_height) // 2
    return left, top, left + crop_width, top + crop_height


def _plain_rgb(image: Image.Image) -> bool:
    # A "transparency" entry makes the processor's convert_to_rgb composite onto white.
    return image.mode == "RGB" and "transparency" not in image.info


# --- reading the processor -------------------------------------------------------------------


def _check_pipeline(processor: Any) -> None:
    from transformers.image_processing_backends import PilBackend

    if not isinstance(processor, PilBackend):
        raise _Unsupported(f"{type(processor).__name__} is not a PIL-backend image processor")
    cls = type(processor)
    overridden = [name for name in _PIPELINE if getattr(cls, name) is not getattr(PilBackend, name)]
    if overridden:
        raise _Unsupported(f"{cls.__name__} overrides {', '.join(overridden)}")
    names = getattr(processor, "_valid_kwargs_names", None) or []
    unknown = sorted(
        name
        for name in names
        if name not in _HANDLED | _INERT and getattr(processor, name, None) is not None
    )
    if unknown:
        raise _Unsupported(f"{cls.__name__} sets {', '.join(unknown)}")
    if getattr(processor, "do_pad", None):
        raise _Unsupported("the processor pads images (do_pad)")


def _size_keys(value: Any, name: str) -> dict[str, int]:
    from transformers.image_utils import SizeDict

    if not isinstance(value, SizeDict):
        raise _Unsupported(f"{name} is {value!r}, not a SizeDict")
    keys = {key: getattr(value, key) for key in _SIZE_KEYS if getattr(value, key) is not None}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in keys.values()):
        raise _Unsupported(f"{name} {keys} is not made of positive integers")
    return keys


def _resize_rule(processor: Any) -> _Resize | None:
    if not processor.do_resize:
        return None
    keys = _size_keys(processor.size, "size")
    if set(keys) == {"shortest_edge"}:
        return _Resize(keys["shortest_edge"])
    if set(keys) == {"height", "width"}:
        return _Resize(None, (keys["width"], keys["height"]))
    raise _Unsupported(f"size {keys} is neither shortest_edge alone nor height and width")


def _resample(processor: Any) -> Image.Resampling:
    from transformers.image_utils import PILImageResampling

    value = processor.resample
    if value is None:  # the PIL backend's default
        return Image.Resampling.BILINEAR
    if not isinstance(value, (PILImageResampling, int)) or isinstance(value, bool):
        raise _Unsupported(f"resample {value!r} is not a PIL filter")
    try:
        return Image.Resampling(int(value))
    except ValueError as exc:
        raise _Unsupported(f"resample {value!r} is not a PIL filter") from exc


def _crop_size(processor: Any) -> tuple[int, int] | None:
    if not processor.do_center_crop:
        return None
    keys = _size_keys(processor.crop_size, "crop_size")
    if set(keys) != {"height", "width"}:
        raise _Unsupported(f"crop_size {keys} is not a height and width")
    return keys["height"], keys["width"]


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _channel_values(value: Any, name: str) -> list[float]:
    if _is_number(value):
        return [float(value)] * _CHANNELS
    if isinstance(value, (list, tuple)) and len(value) == _CHANNELS and all(map(_is_number, value)):
        return [float(v) for v in value]
    raise _Unsupported(f"{name} {value!r} is not a number or {_CHANNELS} numbers")


def _value_table(processor: Any) -> np.ndarray:
    """Output value of every (channel, uint8 value), by the PIL backend's operations in its
    order and dtypes: rescale upcasts to float64, multiplies and casts to float32 (transformers'
    `rescale`); normalize casts integer input to float32, makes float32 mean and std arrays and
    computes (x - mean) / std in float32 (transformers' `normalize`)."""
    if not processor.do_rescale and not processor.do_normalize:
        raise _Unsupported("neither rescale nor normalize: the processor returns uint8 values")
    values = np.broadcast_to(np.arange(256, dtype=np.uint8), (_CHANNELS, 256))
    if processor.do_rescale:
        factor = processor.rescale_factor
        if not _is_number(factor):
            raise _Unsupported(f"rescale_factor {factor!r} is not a number")
        table = (values.astype(np.float64) * factor).astype(np.float32)
    else:
        table = values.astype(np.float32)
    if processor.do_normalize:
        mean = np.array(_channel_values(processor.image_mean, "image_mean"), dtype=table.dtype)
        std = np.array(_channel_values(processor.image_std, "image_std"), dtype=table.dtype)
        # The processor's arrays are (C, H, W) and it normalizes `((x.T - mean) / std).T`.
        table = ((table.T - mean) / std).T
    return np.ascontiguousarray(table, dtype=np.float32)


# --- verification ----------------------------------------------------------------------------

# (width, height) of the probes: landscape, portrait, square, odd, tiny, near-degenerate and very
# wide or tall images, so both resize rules, both crop cases (inside and padded) and the
# truncation of the long side are all exercised.
PROBE_SIZES: tuple[tuple[int, int], ...] = (
    (640, 480),
    (480, 640),
    (256, 256),
    (224, 224),
    (333, 517),
    (517, 333),
    (225, 223),
    (50, 30),
    (30, 50),
    (7, 5),
    (3, 3),
    (2, 1),
    (1, 1),
    (1000, 60),
    (60, 1000),
)
_PROBE_SEED = 20240611


def probe_images() -> list[Image.Image]:
    """Seeded random-noise images of every probe size (noise reaches every uint8 value and makes
    bicubic overshoot clip), and one smooth gradient."""
    rng = np.random.default_rng(_PROBE_SEED)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, _CHANNELS), dtype=np.uint8), "RGB")
        for w, h in PROBE_SIZES
    ]
    y, x = np.mgrid[0:300, 0:400]
    gradient = np.stack([x * 255 // 399, y * 255 // 299, (x + y) * 255 // 698], axis=-1)
    images.append(Image.fromarray(gradient.astype(np.uint8), "RGB"))
    return images


def mismatch(transform: PixelTransform, image: Image.Image) -> str | None:
    """Why the transform's output for one image differs from the processor's, or None."""
    size = "x".join(map(str, image.size))
    try:
        batch = transform.processor(images=[image], return_tensors="pt")
        expected = batch.get("pixel_values")
        got = transform.pixel_values([image])
    except Exception as exc:  # either side failing on a probe is a difference
        return f"probe {size}: {type(exc).__name__}: {exc}"
    if set(batch.keys()) != {"pixel_values"}:
        return f"the processor returns {sorted(batch.keys())}, not only pixel_values"
    if not isinstance(expected, torch.Tensor):
        return f"probe {size}: the processor's pixel_values is a {type(expected).__name__}"
    if expected.shape != got.shape or expected.dtype != got.dtype:
        return (
            f"probe {size}: processor {tuple(expected.shape)} {expected.dtype}, "
            f"transform {tuple(got.shape)} {got.dtype}"
        )
    difference = (expected - got).abs().max().item()
    if not difference <= TOLERANCE:
        return f"probe {size}: max abs difference {difference:.3g}"
    return None


def verified_transform(
    processor: Any, probes: Sequence[Image.Image] | None = None
) -> PixelTransform | Declined:
    """The transform for this processor if it equals the processor on every probe image."""
    transform = PixelTransform.from_processor(processor)
    if isinstance(transform, Declined):
        return transform
    for image in probe_images() if probes is None else probes:
        reason = mismatch(transform, image)
        if reason is not None:
            return Declined(f"differs from the processor: {reason}")
    return transform


def choose_preprocessor(processor: Any, enabled: bool) -> PixelTransform | Any:
    """The verified transform, or the processor itself (disabled, or declined)."""
    name = type(processor).__name__
    if not enabled:
        log.info("image preprocessing: %s (exact_fast_preprocessing is off)", name)
        return processor
    probes = probe_images()
    result = verified_transform(processor, probes)
    if isinstance(result, Declined):
        log.info("image preprocessing: %s; the fast path declined: %s", name, result.reason)
        return processor
    log.info(
        "image preprocessing: fast path, verified equal to %s on %d probe images",
        name,
        len(probes),
    )
    return result
