"""Inpainting: the family's inpainting pipeline over the loaded weights, and the mask rules.

The pipeline comes from `from_pipe`, so it shares every component (and its memory) with the
text-to-image pipeline. Qwen-Image names its own class (the auto mapping cannot switch its task,
as for image-to-image); everything else goes through AutoPipelineForInpainting (Stable Diffusion
1.x/2.x, SDXL, SD3, FLUX...). A family without one (HunyuanDiT) gets None: InpaintImage then
answers FAILED_PRECONDITION.

Masks follow diffusers' mask processors: greyscale (a colour mask by its luminance; the runtime
composites transparency on white, so transparent pixels are repainted), white is
repainted, black kept, binarised at mid-grey (128..255 repaint). The mask must have the image's
size, so a client never has its mask silently stretched over a different picture; both are then
resized together to the output size. A mask with nothing to repaint is refused (the job would
return the input at the cost of a full run); an all-white one repaints everything.
"""

from __future__ import annotations

import logging
from typing import Any

import diffusers
from PIL import Image

from services.runtime.errors import Violations

log = logging.getLogger("mmserve.t2i.inpainting")

# Families whose inpainting pipeline the auto mapping does not pick from their text-to-image one.
_CLASSES = {"qwen_image": "QwenImageInpaintPipeline", "qwen_image_edit": "QwenImageInpaintPipeline"}
# Mask pixels at or above this (0..255) are repainted: the pipelines binarise at 0.5.
REPAINT_THRESHOLD = 128


def inpainting_pipeline(pipe: Any, family: str, **from_pipe_kwargs: Any) -> Any | None:
    """The inpainting twin of `pipe` sharing its components, or None if the family has none."""
    class_name = _CLASSES.get(family)
    try:
        if class_name is not None:
            return getattr(diffusers, class_name).from_pipe(pipe, **from_pipe_kwargs)
        return diffusers.AutoPipelineForInpainting.from_pipe(pipe, **from_pipe_kwargs)
    except ValueError as exc:  # no inpainting pipeline linked to this family (HunyuanDiT)
        log.info("no inpainting pipeline for %s: %s", family, exc)
        return None


def checked_mask(
    mask: Image.Image, image_size: tuple[int, int], problems: Violations
) -> Image.Image | None:
    """The mask as greyscale if it has the image's size; else None, with the violation added."""
    if mask.size != image_size:
        problems.add(
            "mask",
            f"is {mask.size[0]}x{mask.size[1]} pixels; it must have the image's size "
            f"{image_size[0]}x{image_size[1]}",
        )
        return None
    return mask.convert("L")


def sized_mask(mask: Image.Image, width: int, height: int, problems: Violations) -> Image.Image:
    """`mask` at the output size, refused (field `mask`) when nothing in it is repainted."""
    if mask.size != (width, height):
        mask = mask.resize((width, height), Image.Resampling.LANCZOS)
    brightest = mask.getextrema()[1]
    if not isinstance(brightest, int | float) or brightest < REPAINT_THRESHOLD:
        problems.add(
            "mask",
            f"has nothing to repaint: every pixel is darker than mid-grey ({REPAINT_THRESHOLD}); "
            "white marks what to repaint, black what to keep",
        )
    return mask
