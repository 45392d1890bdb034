"""ChatRequest (protobuf) to ChatInput (plain Python), with every contract rule checked first.

All violations of a request are reported together, each naming its field as a dotted path
(`messages[1].content[0].image`), so a client can fix everything in one round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image

from mmserve.common.v1 import chat_pb2, media_pb2
from mmserve.vl.v1 import vl_pb2
from services.runtime.errors import FailedPrecondition, FieldViolation, InvalidArgument
from services.vl.chat import (
    ChatInput,
    ChatLimits,
    ImagePart,
    Message,
    Resolution,
    Role,
    Sampling,
    TextPart,
)

ROLES = {
    chat_pb2.ROLE_SYSTEM: Role.SYSTEM,
    chat_pb2.ROLE_USER: Role.USER,
    chat_pb2.ROLE_ASSISTANT: Role.ASSISTANT,
}
MAX_STOP_SEQUENCES = 16
MAX_STOP_BYTES = 256
MAX_TEMPERATURE = 2.0


def check_request(request: vl_pb2.ChatRequest, limits: ChatLimits) -> None:
    """Raises InvalidArgument listing every violation, or FailedPrecondition when the request
    asks for a resolution this model's processor cannot honour."""
    violations = [
        *_check_messages(request.messages, limits),
        *_check_sampling(request.sampling),
        *_check_resolution(request.image_resolution, limits),
    ]
    if violations:
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        raise InvalidArgument(f"invalid request: {summary}", violations)
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


def _check_sampling(params: chat_pb2.SamplingParams) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    if params.HasField("max_new_tokens") and params.max_new_tokens < 1:
        found.append(FieldViolation("sampling.max_new_tokens", "must be >= 1"))
    if params.HasField("temperature") and not 0.0 <= params.temperature <= MAX_TEMPERATURE:
        found.append(FieldViolation("sampling.temperature", "must be in [0, 2]"))
    if params.HasField("top_p") and not 0.0 < params.top_p <= 1.0:
        found.append(FieldViolation("sampling.top_p", "must be in (0, 1]"))
    penalty = params.repetition_penalty
    if params.HasField("repetition_penalty") and not (math.isfinite(penalty) and penalty > 0):
        found.append(FieldViolation("sampling.repetition_penalty", "must be > 0"))
    if len(params.stop) > MAX_STOP_SEQUENCES:
        found.append(
            FieldViolation("sampling.stop", f"at most {MAX_STOP_SEQUENCES} stop sequences")
        )
    for k, stop in enumerate(params.stop):
        if not 1 <= len(stop.encode("utf-8")) <= MAX_STOP_BYTES:
            found.append(
                FieldViolation(f"sampling.stop[{k}]", f"must be 1..{MAX_STOP_BYTES} bytes")
            )
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
    params = request.sampling
    return ChatInput(
        messages=messages,
        sampling=Sampling(
            max_new_tokens=params.max_new_tokens if params.HasField("max_new_tokens") else None,
            temperature=params.temperature if params.HasField("temperature") else None,
            top_p=params.top_p if params.HasField("top_p") else None,
            top_k=params.top_k if params.HasField("top_k") else None,
            repetition_penalty=(
                params.repetition_penalty if params.HasField("repetition_penalty") else None
            ),
            seed=params.seed if params.HasField("seed") else None,
            stop=tuple(params.stop),
        ),
        resolution=Resolution(
            min_pixels=request.image_resolution.min_pixels,
            max_pixels=request.image_resolution.max_pixels,
        ),
    )
