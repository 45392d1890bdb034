"""Instruction edits ("make the sky purple"): the model's edit pipeline over the loaded weights.

Qwen-Image-Edit is the Qwen-Image architecture with an edit-trained transformer; its pipeline
also reads the input image through the Qwen2.5-VL text encoder's vision tower, so it needs the
checkpoint's processor (the `processor/` folder of Qwen/Qwen-Image-Edit: tokenizer and image
processor). A Qwen-Image folder with such a processor (the built-in tiny model ships one) gets
an edit pipeline from `from_pipe`, sharing every component with text-to-image; without one, the
weights are not edit-trained and EditImage answers FAILED_PRECONDITION.

The processor is built from the folder's image processor, in its PIL implementation, and the
pipeline's own tokenizer: the Qwen2-VL processor class otherwise insists on a video processor,
and that one needs torchvision, which the CPU torch build here cannot have. Edits never take
video.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import diffusers

log = logging.getLogger("mmserve.t2i.editing")

# Families with an instruction-edit pipeline over their text-to-image components.
_CLASSES = {"qwen_image": "QwenImageEditPipeline", "qwen_image_edit": "QwenImageEditPipeline"}
PROCESSOR_FOLDER = "processor"


def editing_pipeline(pipe: Any, family: str, folder: Path, **from_pipe_kwargs: Any) -> Any | None:
    """The edit pipeline of `pipe` sharing its components, or None when the model has none."""
    class_name = _CLASSES.get(family)
    if class_name is None:
        return None
    processor_dir = Path(folder) / PROCESSOR_FOLDER
    if not processor_dir.is_dir():
        log.info(
            "no %s/ folder in %s: instruction edits need an edit checkpoint such as "
            "Qwen/Qwen-Image-Edit",
            PROCESSOR_FOLDER,
            folder,
        )
        return None
    processor = edit_processor(processor_dir, pipe.tokenizer)
    return getattr(diffusers, class_name).from_pipe(pipe, processor=processor, **from_pipe_kwargs)


def edit_processor(folder: Path, tokenizer: Any) -> Any:
    """A Qwen2-VL processor of `folder`'s image processor (PIL) and `tokenizer`, no video."""
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    class _ImageOnlyProcessor(Qwen2VLProcessor):
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            # The video processor is the one part left out; everything else is checked.
            if argument is None and argument_name == "video_processor":
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(folder))
    return _ImageOnlyProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=None
    )
