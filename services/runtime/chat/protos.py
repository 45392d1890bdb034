"""mmserve.common.v1 chat messages <-> the plain chat vocabulary, for servicers (engines never
import this module).

SamplingParams is checked as a whole: every bad field is reported at once, each as a
FieldViolation naming its path in the request (`sampling.temperature`, `sampling.stop[2]`), so
a client fixes everything in one round.
"""

from __future__ import annotations

import math

from mmserve.common.v1 import chat_pb2
from services.runtime.chat.messages import FinishReason, Role
from services.runtime.chat.sampling import Sampling
from services.runtime.errors import FieldViolation, InvalidArgument

ROLES: dict[int, Role] = {
    chat_pb2.ROLE_SYSTEM: Role.SYSTEM,
    chat_pb2.ROLE_USER: Role.USER,
    chat_pb2.ROLE_ASSISTANT: Role.ASSISTANT,
}
_FINISH_REASONS: dict[FinishReason, chat_pb2.FinishReason.ValueType] = {
    FinishReason.STOP: chat_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: chat_pb2.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: chat_pb2.FINISH_REASON_CANCELLED,
}

MAX_STOP_SEQUENCES = 16
MAX_STOP_BYTES = 256
MAX_TEMPERATURE = 2.0


def finish_reason_proto(reason: FinishReason) -> chat_pb2.FinishReason.ValueType:
    return _FINISH_REASONS[reason]


def sampling_violations(
    params: chat_pb2.SamplingParams, field: str = "sampling"
) -> list[FieldViolation]:
    """Every rule of the contract's SamplingParams that `params` breaks."""
    found: list[FieldViolation] = []

    def check_float(name: str, ok: bool, rule: str) -> None:
        if not params.HasField(name):
            return
        if not math.isfinite(getattr(params, name)):
            found.append(FieldViolation(f"{field}.{name}", "must be a finite number"))
        elif not ok:
            found.append(FieldViolation(f"{field}.{name}", rule))

    if params.HasField("max_new_tokens") and params.max_new_tokens < 1:
        found.append(FieldViolation(f"{field}.max_new_tokens", "must be >= 1"))
    check_float("temperature", 0.0 <= params.temperature <= MAX_TEMPERATURE, "must be in [0, 2]")
    check_float("top_p", 0.0 < params.top_p <= 1.0, "must be in (0, 1]")
    check_float("repetition_penalty", params.repetition_penalty > 0, "must be > 0")
    if len(params.stop) > MAX_STOP_SEQUENCES:
        found.append(
            FieldViolation(f"{field}.stop", f"at most {MAX_STOP_SEQUENCES} stop sequences")
        )
    for index, stop in enumerate(params.stop):
        if not 1 <= len(stop.encode("utf-8")) <= MAX_STOP_BYTES:
            found.append(
                FieldViolation(f"{field}.stop[{index}]", f"must be 1..{MAX_STOP_BYTES} bytes")
            )
    return found


def sampling_from_proto(params: chat_pb2.SamplingParams) -> Sampling:
    """The fields as given (unset ones None), without checking them."""

    def given(name: str) -> bool:
        return params.HasField(name)

    return Sampling(
        max_new_tokens=params.max_new_tokens if given("max_new_tokens") else None,
        temperature=params.temperature if given("temperature") else None,
        top_p=params.top_p if given("top_p") else None,
        top_k=params.top_k if given("top_k") else None,
        repetition_penalty=params.repetition_penalty if given("repetition_penalty") else None,
        seed=params.seed if given("seed") else None,
        stop=tuple(params.stop),
    )


def parse_sampling(params: chat_pb2.SamplingParams, field: str = "sampling") -> Sampling:
    """The checked request sampling; InvalidArgument naming every bad field otherwise."""
    found = sampling_violations(params, field)
    if found:
        raise InvalidArgument.for_fields(found)
    return sampling_from_proto(params)
