"""Request checks that need no model: counts, empty values, limits, enum values. Each failure
names the request field, so clients get INVALID_ARGUMENT with a BadRequest field violation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mmserve.common.v1 import media_pb2
from mmserve.vision.v1 import vision_pb2
from services.runtime.errors import InvalidArgument
from services.vision.inputs import Pooling

DEFAULT_TEMPLATES = ("a photo of a {}.",)

_POOLINGS: dict[int, Pooling] = {vision_pb2.POOLING_CLS: "cls", vision_pb2.POOLING_MEAN: "mean"}
_METRICS = {
    vision_pb2.SIMILARITY_METRIC_UNSPECIFIED: False,
    vision_pb2.SIMILARITY_METRIC_COSINE: False,
    vision_pb2.SIMILARITY_METRIC_MODEL_LOGITS: True,
}


def check_count(name: str, count: int, limit: int, what: str) -> None:
    if count == 0:
        raise InvalidArgument.for_field(name, f"at least one {what} is required")
    if count > limit:
        raise InvalidArgument.for_field(
            name, f"{count} {what}s in one request; the limit is {limit}"
        )


def check_text(name: str, text: str, max_chars: int, what: str = "text") -> None:
    if not text.strip():
        raise InvalidArgument.for_field(name, f"{what} is empty")
    if len(text) > max_chars:
        raise InvalidArgument.for_field(
            name, f"{what} is {len(text)} characters; the limit is {max_chars}"
        )


def check_texts(name: str, texts: Sequence[str], max_chars: int, what: str = "text") -> None:
    for index, text in enumerate(texts):
        check_text(f"{name}[{index}]", text, max_chars, what)


def templates_of(name: str, templates: Sequence[str], limit: int, max_chars: int) -> list[str]:
    """The request's templates, or the default; each must hold exactly one "{}"."""
    if not templates:
        return list(DEFAULT_TEMPLATES)
    check_count(name, len(templates), limit, "template")
    check_texts(name, templates, max_chars, "template")
    for index, template in enumerate(templates):
        if template.count("{}") != 1:
            raise InvalidArgument.for_field(
                f"{name}[{index}]", 'a template needs exactly one "{}" where the label goes'
            )
    return list(templates)


def pooling_of(name: str, value: int, default: Pooling) -> Pooling:
    if value == vision_pb2.POOLING_UNSPECIFIED:
        return default
    if value not in _POOLINGS:
        raise InvalidArgument.for_field(name, f"unknown pooling {value}")
    return _POOLINGS[value]


def wants_model_logits(name: str, value: int) -> bool:
    if value not in _METRICS:
        raise InvalidArgument.for_field(name, f"unknown similarity metric {value}")
    return _METRICS[value]


@dataclass
class Items:
    """VisionInputs sorted by kind, remembering their places: images[i] is row image_rows[i]
    and texts[j] is row text_rows[j] of the original order."""

    images: list[tuple[str, media_pb2.Image]] = field(default_factory=list)  # (field, image)
    image_rows: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    text_rows: list[int] = field(default_factory=list)
    count: int = 0

    def add(self, name: str, item: vision_pb2.VisionInput, max_chars: int) -> None:
        kind = item.WhichOneof("input")
        if kind == "image":
            self.images.append((f"{name}.image", item.image))
            self.image_rows.append(self.count)
        elif kind == "text":
            check_text(f"{name}.text", item.text, max_chars)
            self.texts.append(item.text)
            self.text_rows.append(self.count)
        else:
            raise InvalidArgument.for_field(name, "set either image or text")
        self.count += 1

    def extend(self, name: str, items: Sequence[vision_pb2.VisionInput], max_chars: int) -> None:
        for index, item in enumerate(items):
            self.add(f"{name}[{index}]", item, max_chars)
