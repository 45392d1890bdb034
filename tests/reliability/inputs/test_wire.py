"""Requests that are wrong below the message level: larger than the configured receive limit,
or bytes that do not parse as the request message (garbage, truncation, invalid UTF-8 in a
string field). Every RPC of every capability gets each; the server must answer with a defined
code at once and keep serving."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from tests.reliability.inputs.checks import assert_clean, record, still_serving
from tests.reliability.inputs.fleet import CAPABILITY_MODULES, MAX_MESSAGE_MB, Outcome, Served
from tests.reliability.inputs.protofuzz import message_class
from tests.reliability.inputs.tally import TALLY

LIMIT = MAX_MESSAGE_MB * 1024 * 1024
CAPABILITIES = [pytest.param(c, marks=pytest.mark.servers(c)) for c in CAPABILITY_MODULES]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def unknown_field_message(size: int) -> bytes:
    """A well-formed message of about `size` bytes: one unknown field (number 1000) that every
    request type parses and ignores, so only the size can be refused."""
    return _length_delimited(1000, bytes(size))


def string_path(descriptor: Descriptor, depth: int = 4) -> list[FieldDescriptor] | None:
    """Fields leading to the nearest string field (breadth first), or None if there is none."""
    frontier: list[list[FieldDescriptor]] = [[f] for f in descriptor.fields]
    for _ in range(depth):
        nested: list[list[FieldDescriptor]] = []
        for path in frontier:
            last = path[-1]
            if last.type == FieldDescriptor.TYPE_STRING:
                return path
            if last.message_type is not None:
                nested += [[*path, f] for f in last.message_type.fields]
        frontier = nested
    return None


def bad_utf8_message(descriptor: Descriptor) -> bytes | None:
    """The request with invalid UTF-8 in a string field, written at the wire level (protobuf
    libraries refuse to build such a message, but any peer can send the bytes)."""
    path = string_path(descriptor)
    if path is None:
        return None
    payload = b"\xc0\xaf\xff\xfe"
    for f in reversed(path):
        payload = _length_delimited(f.number, payload)
    return payload


MALFORMED = {
    "garbage": b"\xff\xff\xff\xff",
    "truncated_field": b"\x0a\x05ab",
    "length_past_end": b"\x0a\xff\xff\xff\xff\x0f" + bytes(16),
    "end_group_without_start": b"\x0c",
}


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_messages_over_the_limit_get_resource_exhausted(
    capability: str, fleet: dict[str, Served]
) -> None:
    served = fleet[capability]
    problems: list[str] = []
    for method in served.service.methods:
        rpc = served.rpc(method.name)
        outcome = served.call(rpc, unknown_field_message(LIMIT + 64 * 1024))
        record("oversized messages (limit + 64 KiB)", outcome)
        if outcome.code is not grpc.StatusCode.RESOURCE_EXHAUSTED:
            problems.append(f"over the limit: {outcome}")
    # The limit is the configured one, not something lower: just under it is read.
    under = served.call("GetModelInfo", unknown_field_message(LIMIT - 4096))
    record("messages just under the limit", under)
    if under.code is not grpc.StatusCode.OK:
        problems.append(f"just under the limit: {under}")
    assert_clean(problems + still_serving(served, "oversized messages"))


def _malformed_outcomes(served: Served) -> list[tuple[str, Outcome]]:
    results = []
    for method in served.service.methods:
        rpc = served.rpc(method.name)
        payloads = dict(MALFORMED)
        bad_utf8 = bad_utf8_message(rpc.input)
        if bad_utf8 is not None:
            payloads["invalid_utf8_string"] = bad_utf8
        for name, payload in payloads.items():
            outcome = served.call(rpc, payload)
            # Bytes that do not parse have no field to name: INVALID_ARGUMENT without a
            # BadRequest violation is the right answer here.
            problems = [p for p in outcome.problems() if "BadRequest" not in p]
            failed = outcome.code is not grpc.StatusCode.INVALID_ARGUMENT or bool(problems)
            TALLY.add("malformed wire requests", outcome.code.name, failed)
            results.append((name, outcome))
    return results


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_malformed_requests_never_hang_or_crash(capability: str, fleet: dict[str, Served]) -> None:
    served = fleet[capability]
    problems = [
        f"{name}: {outcome}"
        for name, outcome in _malformed_outcomes(served)
        if outcome.code
        in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK)
    ]
    after = still_serving(served, "malformed requests")
    assert_clean(problems + after)


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_malformed_requests_get_invalid_argument(capability: str, fleet: dict[str, Served]) -> None:
    served = fleet[capability]
    outcomes = _malformed_outcomes(served)
    wrong = [
        f"{name}: {outcome}"
        for name, outcome in outcomes
        if outcome.code is not grpc.StatusCode.INVALID_ARGUMENT
    ]
    assert_clean(wrong)


def echo_bait(descriptor: Descriptor, depth: int = 2) -> Message:
    """A request whose errors would quote a lot of it: every string 20,000 multi-byte
    characters (ids, names, voices, prompts), every repeated message 3,000 empty elements
    (one violation each), nested one level."""
    message = message_class(descriptor)()
    for f in descriptor.fields:
        if f.containing_oneof is not None and message.WhichOneof(f.containing_oneof.name):
            continue
        if f.type == FieldDescriptor.TYPE_STRING:
            if f.is_repeated:
                getattr(message, f.name).extend(["ü" * 40] * 3000)
            else:
                setattr(message, f.name, "ü" * 20_000)
        elif f.message_type is not None and f.message_type.GetOptions().map_entry:
            bait = getattr(message, f.name)
            for index in range(3000):  # string maps (metadata, filters): 3,000 long keys
                bait[f"{index}-" + "ü" * 40] = "ü" * 40
        elif f.message_type is not None and depth > 0:
            if f.is_repeated:
                target = getattr(message, f.name)
                for _ in range(3000):
                    target.add()
            else:
                getattr(message, f.name).CopyFrom(echo_bait(f.message_type, depth - 1))
    return message


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_errors_quoting_huge_input_stay_readable(capability: str, fleet: dict[str, Served]) -> None:
    """Errors that quote the request (an unknown 40 KB id, 3,000 bad items) must still reach
    the client with their own code and details. They used to overflow gRPC's trailer limit and
    arrive as RESOURCE_EXHAUSTED 'metadata size exceeds hard limit', with no reason at all."""
    served = fleet[capability]
    problems: list[str] = []
    for method in served.service.methods:
        rpc = served.rpc(method.name)
        outcome = served.call(rpc, echo_bait(rpc.input))
        record("errors quoting huge input", outcome)
        problems += [f"{outcome}: {p}" for p in outcome.problems()]
        # Requests without fields (GetModelInfo, ListVoices, ListRecordings...) hold no junk.
        if outcome.code is grpc.StatusCode.OK and rpc.input.fields:
            problems.append(f"a request made of junk succeeded: {outcome}")
    assert_clean(problems + still_serving(served, "errors quoting huge input"))
