"""ChatRequest (protobuf) to ChatInput (plain Python), with every contract rule checked first.

All violations of a request are reported together, each naming its field as a dotted path
(`messages[1].content[0].image`), so a client can fix everything in one round.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from mmserve.common.v1 import media_pb2
from mmserve.vl.v1 import vl_pb2
from services.runtime.chat.messages import ImagePart, Message, Role, TextPart
from services.runtime.chat.protos import (
    ROLES,
    sampling_from_proto,
    sampling_violations,
)
from services.runtime.errors import FailedPrecondition, FieldViolation, InvalidArgument
from services.vl.chat import ChatInput, ChatLimits, Resolution


def check_request(request: vl_pb2.ChatRequest, limits: ChatLimits) -> None:
    """Raises InvalidArgument listing every violation, or FailedPrecondition when the request
    asks for a resolution this model's processor cannot honour."""
    violations = [
        *_check_messages(request.messages, limits),
        *sampling_violations(request.sampling),
        *_check_resolution(request.image_resolution, limits),
    ]
    if violations:
        raise InvalidArgument.for_fields(violations)
    resolution = request.image_resolution
    if (resolution.min_pixels or resolution.max_pixels) and not limits.resolution_supported:
        raise FailedPrecondition(
            "this model's image processor uses a fixed resolution; leave image_resolution unset"
        )


def _check_messages(
    messages: Sequence[vl_pb2.ChatMessage], limits: ChatLimits
) -> list[FieldViolation]:
    if not messages:
        return [FieldViolation("messages", "at least one message is required")]
    found: list[FieldViolation] = []
    if len(messages) > limits.max_messages:
        found.append(
            FieldViolation(
                "messages", f"{len(messages)} messages; at most {limits.max_messages} are allowed"
            )
        )
    images = 0
    for i, message in enumerate(messages):
        path = f"messages[{i}]"
        role = ROLES.get(message.role)
        if role is None:
            found.append(
                FieldViolation(f"{path}.role", "must be ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT")
            )
        elif role is Role.SYSTEM and i != 0:
            found.append(FieldViolation(f"{path}.role", "a SYSTEM message may only come first"))
        if not message.content:
            found.append(FieldViolation(f"{path}.content", "at least one text or image part"))
        for j, part in enumerate(message.content):
            kind = part.WhichOneof("part")
            if kind is None:
                found.append(FieldViolation(f"{path}.content[{j}]", "set text or image"))
            elif kind == "image":
                images += 1
                field = f"{path}.content[{j}].image"
                if role is not None and role is not Role.USER:
                    found.append(FieldViolation(field, "images are only allowed in USER messages"))
                if images == limits.max_images + 1:
                    found.append(
                        FieldViolation(
                            field, f"more than {limits.max_images} images in the request"
                        )
                    )
    last = len(messages) - 1
    if ROLES.get(messages[last].role) not in (None, Role.USER):
        found.append(FieldViolation(f"messages[{last}].role", "the last message must be USER"))
    return found


def _check_resolution(
    resolution: vl_pb2.ImageResolution, limits: ChatLimits
) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    bounds = f"[{limits.min_pixels}, {limits.max_pixels}]"
    for name in ("min_pixels", "max_pixels"):
        value = getattr(resolution, name)
        if value and not limits.min_pixels <= value <= limits.max_pixels:
            found.append(FieldViolation(f"image_resolution.{name}", f"must be 0 or in {bounds}"))
    low = resolution.min_pixels or limits.default_min_pixels
    high = resolution.max_pixels or limits.default_max_pixels
    if not found and low > high:
        found.append(
            FieldViolation(
                "image_resolution.min_pixels", f"min_pixels {low} is above max_pixels {high}"
            )
        )
    return found


def image_fields(request: vl_pb2.ChatRequest) -> list[tuple[str, media_pb2.Image]]:
    """(field path, Image message) of every image, in the order the model sees them."""
    return [
        (f"messages[{i}].content[{j}].image", part.image)
        for i, message in enumerate(request.messages)
        for j, part in enumerate(message.content)
        if part.WhichOneof("part") == "image"
    ]


def to_chat(request: vl_pb2.ChatRequest, images: Sequence[Image.Image]) -> ChatInput:
    """The checked request as plain Python; `images` are the decoded images in image_fields
    order."""
    decoded = iter(images)
    messages = tuple(
        Message(
            ROLES[message.role],
            tuple(
                ImagePart(next(decoded))
                if part.WhichOneof("part") == "image"
                else TextPart(part.text)
                for part in message.content
            ),
        )
        for message in request.messages
    )
    return ChatInput(
        messages=messages,
        sampling=sampling_from_proto(request.sampling),
        resolution=Resolution(
            min_pixels=request.image_resolution.min_pixels,
            max_pixels=request.image_resolution.max_pixels,
        ),
    )
