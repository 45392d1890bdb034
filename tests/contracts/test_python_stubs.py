"""Contract tests for mmserve's protobuf files and their generated Python stubs.

Everything here is generic: the tests walk the descriptors of every generated ``*_pb2`` module
(one per .proto file under protos/), so a new message, field, oneof or service is covered as
soon as ``make protos`` has regenerated gen/python. Nothing names a field by hand except the
conventions the API promises (GetJob/CancelJob/GetModelInfo, job ids, heartbeats).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from google.protobuf import descriptor_pb2, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, OneofDescriptor
from google.protobuf.message import Message

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "protos"
PROTO_FILES = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))

# Capability package -> its one service. The service full name is also its grpc.health.v1 name.
CAPABILITIES = {
    "t2i": "ImageGenerationService",
    "vl": "VisionLanguageService",
    "vision": "VisionService",
    "omni": "OmniService",
}
# Every capability service answers these, with the shared mmserve.common.v1 job messages.
REQUIRED_METHODS = ("GetModelInfo", "GetJob", "CancelJob")

MAX_DEPTH = 8  # nested messages are populated down to this depth, then left empty but present


def _module_name(proto: str, suffix: str) -> str:
    return proto.removesuffix(".proto").replace("/", ".") + suffix


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # a clear collection error instead of a bare traceback
        raise ImportError(
            f"cannot import generated module {name}: run `make protos` (and "
            f"`make install-editable`) so that gen/python matches protos/ ({exc})"
        ) from exc


PB2 = {proto: _import(_module_name(proto, "_pb2")) for proto in PROTO_FILES}


# --------------------------------------------------------------------------------------------
# Descriptor helpers
# --------------------------------------------------------------------------------------------


def _walk(desc: Descriptor) -> Iterator[Descriptor]:
    """A message and its nested messages, recursively (map entry types excluded)."""
    yield desc
    for nested in desc.nested_types:
        if not nested.GetOptions().map_entry:
            yield from _walk(nested)


ALL_MESSAGES: list[Descriptor] = [
    desc
    for module in PB2.values()
    for top in module.DESCRIPTOR.message_types_by_name.values()
    for desc in _walk(top)
]

_PROTO3_OPTIONAL: dict[str, frozenset[str]] = {}


def _proto3_optional(desc: Descriptor) -> frozenset[str]:
    """Names of the fields declared `optional` in proto3 (explicit presence)."""
    if desc.full_name not in _PROTO3_OPTIONAL:
        proto = descriptor_pb2.DescriptorProto()
        desc.CopyToProto(proto)
        _PROTO3_OPTIONAL[desc.full_name] = frozenset(
            f.name for f in proto.field if f.proto3_optional
        )
    return _PROTO3_OPTIONAL[desc.full_name]


def _real_oneofs(desc: Descriptor) -> list[OneofDescriptor]:
    """Declared oneofs, without the synthetic ones protoc makes for proto3 `optional`."""
    optional = _proto3_optional(desc)
    return [o for o in desc.oneofs if not (len(o.fields) == 1 and o.fields[0].name in optional)]


def _real_oneof_of(fd: FieldDescriptor) -> OneofDescriptor | None:
    oneof = fd.containing_oneof
    if oneof is None or fd.name in _proto3_optional(fd.containing_type):
        return None
    return oneof


def _is_map(fd: FieldDescriptor) -> bool:
    return (
        fd.type == FieldDescriptor.TYPE_MESSAGE
        and fd.is_repeated
        and fd.message_type.GetOptions().map_entry
    )


def _cls(desc: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(desc)


# --------------------------------------------------------------------------------------------
# Populating any message
# --------------------------------------------------------------------------------------------

_INT_VALUES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (2**32 - 1, 1),
    FieldDescriptor.TYPE_FIXED32: (2**32 - 1, 1),
    FieldDescriptor.TYPE_UINT64: (2**64 - 1, 1),  # above 2**53: JSON must carry it as a string
    FieldDescriptor.TYPE_FIXED64: (2**64 - 1, 1),
}


def _scalar(fd: FieldDescriptor, i: int = 0) -> object:
    """A non-default value of the field's type (i = 0 or 1 gives two distinct values)."""
    t = fd.type
    if t in _INT_VALUES:
        return _INT_VALUES[t][i]
    if t == FieldDescriptor.TYPE_DOUBLE:
        return (1.5, -2.25e300)[i]
    if t == FieldDescriptor.TYPE_FLOAT:
        return (2.5, -0.375)[i]  # exact in float32
    if t == FieldDescriptor.TYPE_BOOL:
        return (True, False)[i]
    if t == FieldDescriptor.TYPE_STRING:
        return (f"{fd.name} ✓ é 雪", 'second "line"\n')[i]
    if t == FieldDescriptor.TYPE_BYTES:
        return (bytes([0, 255, 254, 128]) + fd.name.encode(), b"\x01")[i]
    if t == FieldDescriptor.TYPE_ENUM:
        values = fd.enum_type.values
        return (values[-1].number, values[min(1, len(values) - 1)].number)[i]
    raise NotImplementedError(f"{fd.full_name}: no test value for field type {t}")


def _timestamp() -> Message:
    from google.protobuf import timestamp_pb2

    return timestamp_pb2.Timestamp(seconds=1_767_225_600, nanos=123_000_000)


def _duration() -> Message:
    from google.protobuf import duration_pb2

    return duration_pb2.Duration(seconds=90, nanos=500_000_000)


def _field_mask() -> Message:
    from google.protobuf import field_mask_pb2

    return field_mask_pb2.FieldMask(paths=["params.seed", "preview"])


# Well-known types whose JSON form has rules a generic value would break.
_WKT = {
    "google.protobuf.Timestamp": _timestamp,
    "google.protobuf.Duration": _duration,
    "google.protobuf.FieldMask": _field_mask,
}
_WKT_UNSUPPORTED = {
    "google.protobuf.Any",
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
}


def _set_message(parent_field: Message, value: Message) -> None:
    parent_field.SetInParent()  # presence even when `value` is empty
    parent_field.MergeFrom(value)


def populate(desc: Descriptor, choice: dict[str, str] | None = None, depth: int = 0) -> Message:
    """An instance of `desc` with every field set to a non-default value.

    Repeated fields and maps get two elements; nested messages are populated down to MAX_DEPTH
    (deeper ones are present but empty). Of each oneof exactly one member is set: the one named
    in `choice` (oneof name -> field name; top level only), else the first.
    """
    if desc.full_name in _WKT:
        return _WKT[desc.full_name]()
    if desc.full_name in _WKT_UNSUPPORTED:
        raise NotImplementedError(f"add a test value for {desc.full_name} to _WKT")
    msg = _cls(desc)()
    chosen = {o.name: o.fields[0].name for o in _real_oneofs(desc)}
    chosen.update(choice or {})
    for fd in desc.fields:
        oneof = _real_oneof_of(fd)
        if oneof is not None and chosen[oneof.name] != fd.name:
            continue
        target = getattr(msg, fd.name) if fd.is_repeated else None
        if _is_map(fd):
            key_fd = fd.message_type.fields_by_name["key"]
            value_fd = fd.message_type.fields_by_name["value"]
            for i in range(2):
                key = _scalar(key_fd, i)
                if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                    _set_message(target[key], populate(value_fd.message_type, None, depth + 1))
                else:
                    target[key] = _scalar(value_fd, i)
        elif fd.is_repeated and fd.type == FieldDescriptor.TYPE_MESSAGE:
            for _ in range(2):
                target.add().MergeFrom(populate(fd.message_type, None, depth + 1))
        elif fd.is_repeated:
            target.extend([_scalar(fd, 0), _scalar(fd, 1)])
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            sub = getattr(msg, fd.name)
            if depth >= MAX_DEPTH:
                sub.SetInParent()
            else:
                _set_message(sub, populate(fd.message_type, None, depth + 1))
        else:
            setattr(msg, fd.name, _scalar(fd))
    return msg


def _expected_set_fields(desc: Descriptor, choice: dict[str, str]) -> set[str]:
    chosen = {o.name: o.fields[0].name for o in _real_oneofs(desc)}
    chosen.update(choice)
    return {
        fd.name
        for fd in desc.fields
        if (oneof := _real_oneof_of(fd)) is None or chosen[oneof.name] == fd.name
    }


def _default_value(fd: FieldDescriptor) -> object:
    """The zero value of a singular scalar field's type."""
    if fd.type == FieldDescriptor.TYPE_STRING:
        return ""
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return b""
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return False
    if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 0.0
    return 0  # integers and enums


# --------------------------------------------------------------------------------------------
# Test cases
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    desc: Descriptor
    choice: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        picked = ",".join(f"{k}={v}" for k, v in sorted(self.choice.items()))
        return self.desc.full_name + (f"[{picked}]" if picked else "")


def _cases() -> list[Case]:
    """One case per message (first member of each oneof), plus one per further oneof member."""
    cases = []
    for desc in ALL_MESSAGES:
        cases.append(Case(desc))
        for oneof in _real_oneofs(desc):
            cases.extend(Case(desc, {oneof.name: fd.name}) for fd in oneof.fields[1:])
    return cases


CASES = _cases()
ONEOF_MEMBERS = [
    (desc, oneof.name, fd.name)
    for desc in ALL_MESSAGES
    for oneof in _real_oneofs(desc)
    for fd in oneof.fields
]
OPTIONAL_MESSAGES = [desc for desc in ALL_MESSAGES if _proto3_optional(desc)]


def _json_keys_ok(msg: Message, data: object) -> list[str]:
    """Problems with the JSON object keys of `msg` (lowerCamelCase json_name, recursively)."""
    problems: list[str] = []
    if msg.DESCRIPTOR.full_name.startswith("google.protobuf.") or not isinstance(data, dict):
        return problems
    by_json = {fd.json_name: fd for fd in msg.DESCRIPTOR.fields}
    for key, value in data.items():
        fd = by_json.get(key)
        if fd is None:
            problems.append(f"{msg.DESCRIPTOR.full_name}: JSON key {key!r} is not a json_name")
            continue
        if fd.type == FieldDescriptor.TYPE_MESSAGE and not _is_map(fd):
            subs = getattr(msg, fd.name)
            pairs = zip(subs, value, strict=True) if fd.is_repeated else [(subs, value)]
            for sub, sub_data in pairs:
                problems.extend(_json_keys_ok(sub, sub_data))
    return problems


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------


def test_every_proto_file_has_messages() -> None:
    assert PROTO_FILES, f"no .proto files under {PROTO_ROOT}"
    assert len(ALL_MESSAGES) >= len(PROTO_FILES), "message walk found too few messages"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_binary_round_trip(case: Case) -> None:
    msg = populate(case.desc, case.choice)
    set_fields = {fd.name for fd, _ in msg.ListFields()}
    expected = _expected_set_fields(case.desc, case.choice)
    assert set_fields == expected, (
        f"test generator left fields unset in {case.id}: {sorted(expected - set_fields)}"
    )
    data = msg.SerializeToString()
    back = type(msg).FromString(data)
    assert back == msg, f"{case.id}: binary round trip changed the message:\n{back}\n!=\n{msg}"
    assert back.SerializeToString(deterministic=True) == msg.SerializeToString(deterministic=True)
    for oneof in _real_oneofs(case.desc):
        assert back.WhichOneof(oneof.name) == msg.WhichOneof(oneof.name), (
            f"{case.id}: oneof {oneof.name} lost its member"
        )


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_json_round_trip(case: Case) -> None:
    msg = populate(case.desc, case.choice)
    text = json_format.MessageToJson(msg)
    problems = _json_keys_ok(msg, json.loads(text))
    assert not problems, "\n".join(problems)
    back = json_format.Parse(text, type(msg)())
    assert back == msg, f"{case.id}: JSON round trip changed the message.\nJSON: {text}"
    # Parsers must also accept the original proto field names (grpcurl and some clients send them).
    snake = json_format.MessageToJson(msg, preserving_proto_field_name=True)
    assert json_format.Parse(snake, type(msg)()) == msg, f"{case.id}: proto-name JSON differs"


@pytest.mark.parametrize("desc", OPTIONAL_MESSAGES, ids=lambda d: d.full_name)
def test_proto3_optional_presence_survives_round_trips(desc: Descriptor) -> None:
    optional = sorted(_proto3_optional(desc))
    cls = _cls(desc)

    # Set to the zero value: only explicit presence can tell "0" from "unset".
    msg = cls()
    for name in optional:
        setattr(msg, name, _default_value(desc.fields_by_name[name]))
        assert msg.HasField(name), f"{desc.full_name}.{name}: no presence after assignment"
    from_binary = cls.FromString(msg.SerializeToString())
    from_json = json_format.Parse(json_format.MessageToJson(msg), cls())
    for name in optional:
        assert from_binary.HasField(name), f"{desc.full_name}.{name}: presence lost (binary)"
        assert from_json.HasField(name), f"{desc.full_name}.{name}: presence lost (JSON)"

    # And unset stays unset.
    empty = cls()
    for back in (cls.FromString(b""), json_format.Parse(json_format.MessageToJson(empty), cls())):
        for name in optional:
            assert not back.HasField(name), f"{desc.full_name}.{name}: presence appeared"


@pytest.mark.parametrize(
    ("desc", "oneof", "member"),
    ONEOF_MEMBERS,
    ids=[f"{d.full_name}.{o}={m}" for d, o, m in ONEOF_MEMBERS],
)
def test_oneof_member_with_zero_value_survives_round_trips(
    desc: Descriptor, oneof: str, member: str
) -> None:
    cls = _cls(desc)
    msg = cls()
    fd = desc.fields_by_name[member]
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(msg, member).SetInParent()
    else:
        setattr(msg, member, _default_value(fd))
    assert msg.WhichOneof(oneof) == member
    assert cls.FromString(msg.SerializeToString()).WhichOneof(oneof) == member, "binary"
    assert json_format.Parse(json_format.MessageToJson(msg), cls()).WhichOneof(oneof) == member


# --------------------------------------------------------------------------------------------
# Generated modules, type stubs, gRPC stubs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("proto", PROTO_FILES)
def test_generated_modules_and_type_stubs(proto: str) -> None:
    for suffix in ("_pb2", "_pb2_grpc"):
        module = _import(_module_name(proto, suffix))
        path = Path(module.__file__)
        stub = path.with_suffix(".pyi")
        assert stub.is_file(), f"no type stub {stub} beside {path} (mypy-protobuf, make protos)"
    pkg_root = Path(_import("mmserve").__file__).parent
    assert (pkg_root / "py.typed").is_file(), f"no py.typed in {pkg_root} (PEP 561)"


def _normalized(fdp: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """A copy without source info and json_name (protoc's Python plugin drops both)."""
    out = descriptor_pb2.FileDescriptorProto()
    out.CopyFrom(fdp)
    out.ClearField("source_code_info")

    def strip(messages) -> None:
        for m in messages:
            for f in m.field:
                f.ClearField("json_name")
            strip(m.nested_type)

    strip(out.message_type)
    return out


def test_generated_python_matches_protos(descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
    """gen/python was generated from the protos/ in this tree (`make protos` was re-run)."""
    stale = []
    for fresh in descriptor_set.file:
        generated = descriptor_pb2.FileDescriptorProto.FromString(
            PB2[fresh.name].DESCRIPTOR.serialized_pb
        )
        if _normalized(generated) != _normalized(fresh):
            stale.append(fresh.name)
    assert not stale, f"gen/python is stale for {stale}: run `make protos`"


def _services() -> dict[str, tuple[ModuleType, str]]:
    """Full service name -> (its _pb2 module, proto file), over every proto file."""
    found = {}
    for proto, module in PB2.items():
        for svc in module.DESCRIPTOR.services_by_name.values():
            found[svc.full_name] = (module, proto)
    return found


def test_services_are_exactly_the_capabilities() -> None:
    expected = {f"mmserve.{cap}.v1.{svc}" for cap, svc in CAPABILITIES.items()}
    assert set(_services()) == expected


@pytest.mark.parametrize(("cap", "service"), sorted(CAPABILITIES.items()))
def test_capability_service_has_grpc_stub(cap: str, service: str) -> None:
    pb2 = _import(f"mmserve.{cap}.v1.{cap}_pb2")
    grpc_mod = _import(f"mmserve.{cap}.v1.{cap}_pb2_grpc")
    svc = pb2.DESCRIPTOR.services_by_name.get(service)
    assert svc is not None, f"{pb2.__name__} has no service {service}"
    assert svc.full_name == f"mmserve.{cap}.v1.{service}"
    for attr in (f"{service}Stub", f"{service}Servicer", f"add_{service}Servicer_to_server"):
        assert hasattr(grpc_mod, attr), f"{grpc_mod.__name__} has no {attr}"

    methods = svc.methods_by_name
    missing = [m for m in REQUIRED_METHODS if m not in methods]
    assert not missing, f"{svc.full_name} lacks {missing}"
    for name in ("GetJob", "CancelJob"):
        m = methods[name]
        assert m.input_type.full_name == f"mmserve.common.v1.{name}Request", name
        assert m.output_type.full_name == f"mmserve.common.v1.{name}Response", name
    info = methods["GetModelInfo"].output_type.fields_by_name.get("model_info")
    assert info is not None, "GetModelInfoResponse has no model_info"
    assert info.message_type.full_name == "mmserve.common.v1.ModelInfo"

    # A stub on a channel that never connects (no call is made) has every method.
    with grpc.insecure_channel("127.0.0.1:1") as channel:
        stub = getattr(grpc_mod, f"{service}Stub")(channel)
        for method in svc.methods:
            assert callable(getattr(stub, method.name, None)), f"stub lacks {method.name}"


def test_streaming_twins_share_the_unary_request() -> None:
    problems = []
    for name, (module, _) in sorted(_services().items()):
        methods = module.DESCRIPTOR.services_by_name[name.rsplit(".", 1)[1]].methods_by_name
        for m in methods.values():
            # grpc-web (browsers, through Envoy) has no client streaming.
            if m.client_streaming:
                problems.append(f"{name}.{m.name} is client-streaming (not usable by grpc-web)")
            twin = (
                methods.get(m.name.removeprefix("Stream")) if m.name.startswith("Stream") else None
            )
            if twin is None:
                continue
            if not m.server_streaming or twin.server_streaming:
                problems.append(f"{name}: {m.name} must stream and {twin.name} must be unary")
            if m.input_type is not twin.input_type:
                problems.append(
                    f"{name}: {m.name} takes {m.input_type.full_name}, "
                    f"{twin.name} takes {twin.input_type.full_name}"
                )
    assert not problems, "\n".join(problems)


def test_stream_events_have_id_oneof_and_heartbeat() -> None:
    problems = []
    for name, (module, _) in sorted(_services().items()):
        for m in module.DESCRIPTOR.services_by_name[name.rsplit(".", 1)[1]].methods:
            if not m.server_streaming:
                continue
            out = m.output_type
            oneofs = {o.name: o for o in _real_oneofs(out)}
            if "event" not in oneofs:
                problems.append(f"{out.full_name}: no `oneof event`")
                continue
            members = {fd.name: fd for fd in oneofs["event"].fields}
            heartbeat = members.get("heartbeat")
            if (
                heartbeat is None
                or heartbeat.message_type.full_name != "mmserve.common.v1.Heartbeat"
            ):
                problems.append(f"{out.full_name}: no heartbeat event (proxy idle timeouts)")
            if "job_id" in out.fields_by_name:
                first = oneofs["event"].fields[0]
                if first.message_type is None or first.message_type.name != "JobAccepted":
                    problems.append(f"{out.full_name}: first event member is not JobAccepted")
            elif "session_id" not in out.fields_by_name:
                problems.append(f"{out.full_name}: neither job_id nor session_id")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------
# Media conventions: raw bytes with a format, URIs only as an alternative to bytes
# --------------------------------------------------------------------------------------------

# Name parts that suggest a binary payload, and final parts that make a string fine anyway.
_BINARY_WORDS = {
    "data", "bytes", "blob", "payload", "raw", "content", "pcm", "wav", "png", "jpeg", "jpg",
    "webp", "audio", "image", "images", "video", "frame", "frames", "sample", "samples",
    "waveform", "pixels", "tensor", "base64", "b64", "embedding", "chunk",
}  # fmt: skip
_NAME_LIKE_SUFFIXES = {"id", "ids", "uri", "url", "path", "name", "format", "mime", "type", "kind"}


def _all_fields() -> Iterator[FieldDescriptor]:
    for desc in ALL_MESSAGES:
        yield from desc.fields


def _binary_name_problem(name: str) -> str | None:
    """Why a `string` field with this name looks like a binary payload, or None."""
    parts = name.split("_")
    if "base64" in parts or "b64" in parts:
        return "base64 text (send raw `bytes`)"
    if _BINARY_WORDS.intersection(parts) and parts[-1] not in _NAME_LIKE_SUFFIXES:
        return "a `string` named like a binary payload"
    return None


def test_binary_name_heuristic() -> None:
    """Guard for the heuristic itself: known-bad names are flagged, known-good ones are not."""
    bad = ["data", "image_data", "audio", "png_bytes", "frame", "image_base64", "pcm"]
    good = ["uri", "image_uri", "voice", "text", "recording_path", "job_id", "audio_format"]
    assert [n for n in bad if _binary_name_problem(n) is None] == []
    assert [n for n in good if _binary_name_problem(n) is not None] == []


def test_binary_payloads_are_bytes_not_string() -> None:
    offenders = [
        f"{fd.full_name}: {problem}"
        for fd in _all_fields()
        if fd.type == FieldDescriptor.TYPE_STRING
        and (problem := _binary_name_problem(fd.name)) is not None
    ]
    assert not offenders, "images, audio and other payloads must be `bytes`:\n" + "\n".join(
        offenders
    )


def test_bytes_payloads_carry_their_format() -> None:
    offenders = []
    for desc in ALL_MESSAGES:
        has_bytes = any(fd.type == FieldDescriptor.TYPE_BYTES for fd in desc.fields)
        has_format = any(
            fd.type == FieldDescriptor.TYPE_ENUM
            and (fd.name == "format" or fd.name.endswith("_format"))
            for fd in desc.fields
        )
        if has_bytes and not has_format:
            offenders.append(desc.full_name)
    assert not offenders, f"messages with `bytes` but no `format` enum: {offenders}"


def test_uris_only_as_an_alternative_to_bytes() -> None:
    offenders = []
    for fd in _all_fields():
        parts = fd.name.split("_")
        if fd.type != FieldDescriptor.TYPE_STRING or parts[-1] not in {"uri", "url"}:
            continue
        oneof = _real_oneof_of(fd)
        if oneof is None or not any(f.type == FieldDescriptor.TYPE_BYTES for f in oneof.fields):
            offenders.append(fd.full_name)
    assert not offenders, f"URI fields outside a oneof with raw bytes: {offenders}"


# --------------------------------------------------------------------------------------------
# Documentation in the .proto sources
# --------------------------------------------------------------------------------------------

# Field numbers in descriptor.proto, for SourceCodeInfo paths.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MSG_FIELD, _MSG_NESTED, _MSG_ENUM, _MSG_ONEOF = 2, 3, 4, 8
_ENUM_VALUE = 2
_SERVICE_METHOD = 2


def _documented_elements(
    fdp: descriptor_pb2.FileDescriptorProto,
) -> Iterator[tuple[str, str, tuple[int, ...]]]:
    """(kind, full name, source path) of every element that must carry a leading comment."""
    pkg = fdp.package

    def enum(e: descriptor_pb2.EnumDescriptorProto, scope: str, path: tuple[int, ...]):
        yield "enum", f"{scope}.{e.name}", path
        for i, v in enumerate(e.value):
            yield "enum value", f"{scope}.{e.name}.{v.name}", (*path, _ENUM_VALUE, i)

    def message(m: descriptor_pb2.DescriptorProto, scope: str, path: tuple[int, ...]):
        name = f"{scope}.{m.name}"
        yield "message", name, path
        for i, f in enumerate(m.field):
            yield "field", f"{name}.{f.name}", (*path, _MSG_FIELD, i)
        synthetic = {f.oneof_index for f in m.field if f.proto3_optional}
        for i, o in enumerate(m.oneof_decl):
            if i not in synthetic:
                yield "oneof", f"{name}.{o.name}", (*path, _MSG_ONEOF, i)
        for i, nested in enumerate(m.nested_type):
            if not nested.options.map_entry:
                yield from message(nested, name, (*path, _MSG_NESTED, i))
        for i, e in enumerate(m.enum_type):
            yield from enum(e, name, (*path, _MSG_ENUM, i))

    for i, m in enumerate(fdp.message_type):
        yield from message(m, pkg, (_FILE_MESSAGE, i))
    for i, e in enumerate(fdp.enum_type):
        yield from enum(e, pkg, (_FILE_ENUM, i))
    for i, s in enumerate(fdp.service):
        yield "service", f"{pkg}.{s.name}", (_FILE_SERVICE, i)
        for j, m in enumerate(s.method):
            yield "method", f"{pkg}.{s.name}.{m.name}", (_FILE_SERVICE, i, _SERVICE_METHOD, j)


def _comments(fdp: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], tuple[str, int]]:
    return {
        tuple(loc.path): (loc.leading_comments, loc.span[0] + 1)
        for loc in fdp.source_code_info.location
    }


def test_every_element_has_a_leading_comment(
    descriptor_set: descriptor_pb2.FileDescriptorSet,
) -> None:
    assert {f.name for f in descriptor_set.file} == set(PROTO_FILES)
    missing = []
    checked = 0
    for fdp in descriptor_set.file:
        comments = _comments(fdp)
        assert comments, f"{fdp.name}: no source info (protoc --include_source_info)"
        for kind, name, path in _documented_elements(fdp):
            checked += 1
            text, line = comments.get(path, ("", 0))
            if not text.strip():
                missing.append(f"protos/{fdp.name}:{line}: {kind} {name}")
    assert checked > 100, f"only {checked} elements found: descriptor walk is broken"
    assert not missing, f"{len(missing)} elements without a leading // comment:\n" + "\n".join(
        missing
    )


def test_service_comments_name_their_health_service(
    descriptor_set: descriptor_pb2.FileDescriptorSet,
) -> None:
    problems = []
    for fdp in descriptor_set.file:
        comments = _comments(fdp)
        for i, svc in enumerate(fdp.service):
            full = f"{fdp.package}.{svc.name}"
            text = " ".join(comments.get((_FILE_SERVICE, i), ("", 0))[0].split())
            if f'Health service name: "{full}"' not in text:
                problems.append(f'{full}: comment lacks `Health service name: "{full}"`')
    assert not problems, "\n".join(problems)


def test_service_methods_document_the_job_id_header(
    descriptor_set: descriptor_pb2.FileDescriptorSet,
) -> None:
    """Each service tells unary callers where the job id is (the mmserve-job-id header)."""
    undocumented = []
    for fdp in descriptor_set.file:
        comments = _comments(fdp)
        for i, svc in enumerate(fdp.service):
            texts = [
                comments.get((_FILE_SERVICE, i, 2, j), ("", 0))[0] for j in range(len(svc.method))
            ]
            if not any("mmserve-job-id" in t for t in texts):
                undocumented.append(f"{fdp.package}.{svc.name}")
    assert not undocumented, f"no method comment mentions `mmserve-job-id`: {undocumented}"
