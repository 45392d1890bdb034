"""Loading a model folder's processor (tokenizer + image processor + chat template).

AutoProcessor is the normal path. Without torchvision (which does not work beside the CPU torch
build we pin), processors that own a video processor (Qwen2-VL, Qwen2.5-VL, ...) cannot be
built by AutoProcessor: the video processor class needs torchvision, and the processor refuses
a missing one. This service never takes video, so the fallback builds the same processor class
from its tokenizer and (PIL) image processor with no video processor.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import transformers
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, ProcessorMixin
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES
from transformers.utils import is_torchvision_available

log = logging.getLogger("mmserve.vl.processor")


def load_processor(folder: Path, model_type: str, *, trust_remote_code: bool = False) -> Any:
    """The processor for the model in `folder`, with a chat template."""
    cls = _processor_class(folder, model_type)
    needs_video = cls is not None and "video_processor" in cls.get_attributes()
    if cls is not None and needs_video and not is_torchvision_available():
        log.info("torchvision is absent: building %s without a video processor", cls.__name__)
        processor = _without_video(cls, folder, trust_remote_code)
    else:
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code)
    if not getattr(processor, "chat_template", None):
        template = getattr(getattr(processor, "tokenizer", None), "chat_template", None)
        if not template:
            raise ValueError(
                f"model folder {str(folder)!r} has no chat template (chat_template.jinja, "
                "chat_template.json or tokenizer_config.json); a chat model needs one"
            )
        processor.chat_template = template
    return processor


def _processor_class(folder: Path, model_type: str) -> type[ProcessorMixin] | None:
    """The processor class the folder names, else the one transformers maps its model_type to."""
    name = _named_processor_class(folder) or PROCESSOR_MAPPING_NAMES.get(model_type)
    if not name:
        return None
    cls = getattr(transformers, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, ProcessorMixin) else None


def _named_processor_class(folder: Path) -> str | None:
    for filename in ("processor_config.json", "preprocessor_config.json"):
        path = folder / filename
        if path.is_file():
            try:
                name = json.loads(path.read_text(encoding="utf-8")).get("processor_class")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(name, str) and name:
                return name
    return None


def _without_video(
    cls: type[ProcessorMixin], folder: Path, trust_remote_code: bool
) -> ProcessorMixin:
    parts: dict[str, Any] = {}
    for attribute in cls.get_attributes():
        if attribute == "image_processor":
            # AutoImageProcessor picks the PIL backend class when torchvision is absent.
            parts[attribute] = AutoImageProcessor.from_pretrained(
                folder, trust_remote_code=trust_remote_code
            )
        elif attribute == "tokenizer":
            parts[attribute] = AutoTokenizer.from_pretrained(
                folder, trust_remote_code=trust_remote_code
            )
        elif attribute == "video_processor":
            parts[attribute] = None
        else:
            raise ValueError(
                f"{cls.__name__} needs a {attribute}, which cannot be built without torchvision"
            )
    return _skip_missing_check(cls)(**parts, chat_template=_folder_chat_template(folder))


def _skip_missing_check(cls: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """`cls` whose constructor accepts None for a component (the video processor)."""

    def check_argument_for_proper_class(self: Any, argument_name: str, argument: Any) -> Any:
        if argument is None:
            return None
        return cls.check_argument_for_proper_class(self, argument_name, argument)

    return type(
        cls.__name__,
        (cls,),
        {
            "check_argument_for_proper_class": check_argument_for_proper_class,
            "__module__": __name__,
        },
    )


def _folder_chat_template(folder: Path) -> str | None:
    """The processor's own template file; None leaves the tokenizer's in place."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    legacy = folder / "chat_template.json"
    if legacy.is_file():
        try:
            template = json.loads(legacy.read_text(encoding="utf-8")).get("chat_template")
        except (OSError, ValueError, AttributeError):
            return None
        return template if isinstance(template, str) else None
    return None
