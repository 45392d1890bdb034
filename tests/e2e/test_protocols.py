"""The one edge port speaks every protocol: grpcurl through reflection, HTTP/JSON (curl style,
streams as newline-delimited JSON, errors as JSON with their details), grpc-web text mode and
CORS preflights."""

from __future__ import annotations

import base64
import json
import struct
import time
import urllib.request

from gateway.stack import Stack
from mmserve.t2i.v1 import t2i_pb2
from tests.e2e.support import T2I, grpcurl, post_json, t2i_request


def test_grpcurl_lists_and_describes_through_envoy(sleepy_stack: Stack) -> None:
    listed = grpcurl(["-plaintext", sleepy_stack.address, "list"])
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) >= {
        T2I,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    # Reflection carries the shared messages too (mmserve.common.v1 is imported by t2i).
    described = grpcurl(["-plaintext", sleepy_stack.address, "describe", "mmserve.common.v1.Job"])
    assert described.returncode == 0, described.stderr
    assert "error_code" in described.stdout


def json_objects(text: str) -> list[dict[str, object]]:
    """grpcurl prints one pretty JSON object per message."""
    decoder, found, offset = json.JSONDecoder(), [], 0
    text = text.strip()
    while offset < len(text):
        value, end = decoder.raw_decode(text, offset)
        found.append(value)
        offset = end
        while offset < len(text) and text[offset].isspace():
            offset += 1
    return found


def test_grpcurl_calls_unary_stream_and_health(sleepy_stack: Stack) -> None:
    body = json.dumps({"params": {"prompt": "a fox", "numInferenceSteps": 2}})
    unary = grpcurl(["-plaintext", "-d", body, sleepy_stack.address, f"{T2I}/TextToImage"])
    assert unary.returncode == 0, unary.stderr
    assert json.loads(unary.stdout)["result"]["images"][0]["format"] == "IMAGE_FORMAT_PNG"
    stream = grpcurl(["-plaintext", "-d", body, sleepy_stack.address, f"{T2I}/StreamTextToImage"])
    assert stream.returncode == 0, stream.stderr
    events = json_objects(stream.stdout)
    assert [next(k for k in e if k != "job_id") for e in events] == [
        "accepted",
        "step",
        "step",
        "result",
    ]
    health = grpcurl(
        [
            "-plaintext",
            "-d",
            json.dumps({"service": T2I}),
            sleepy_stack.address,
            "grpc.health.v1.Health/Check",
        ]
    )
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "SERVING"}
    empty = '{"params": {"prompt": ""}}'
    bad = grpcurl(["-plaintext", "-d", empty, sleepy_stack.address, f"{T2I}/TextToImage"])
    assert bad.returncode != 0
    assert "InvalidArgument" in bad.stderr
    assert "params.prompt" in bad.stderr


def url(stack: Stack, method: str) -> str:
    return f"http://{stack.address}/{T2I}/{method}"


def test_http_json_unary(sleepy_stack: Stack) -> None:
    reply = post_json(url(sleepy_stack, "TextToImage"), {"params": {"prompt": "a fox"}})
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"] == "application/json"
    image = reply.json()["result"]["images"][0]
    assert base64.b64decode(image["data"]).startswith(b"\x89PNG")
    assert reply.headers["x-request-id"]
    info = post_json(url(sleepy_stack, "GetModelInfo"), {})
    assert info.json()["modelInfo"]["family"] == "sleepy"


def test_http_json_stream_is_newline_delimited_and_live(sleepy_stack: Stack) -> None:
    body = {"params": {"prompt": "a fox", "numInferenceSteps": 4}}
    reply = post_json(url(sleepy_stack, "StreamTextToImage"), body)
    assert reply.status == 200, reply.body
    events = reply.json_lines()
    assert "accepted" in events[0]
    assert "result" in events[-1]
    assert sum("step" in e for e in events) == 4
    # Lines reach the client as the steps run (0.2 s apart), not all at the end.
    times = [t for (t, _), e in zip(reply.lines, events, strict=True) if "step" in e]
    assert times[-1] - times[0] > 0.4


def test_http_json_errors_carry_field_violations(sleepy_stack: Stack) -> None:
    reply = post_json(url(sleepy_stack, "TextToImage"), {"params": {"prompt": "x", "width": 999}})
    assert reply.status == 400
    status = reply.json()
    assert status["code"] == 3  # INVALID_ARGUMENT
    kinds = {d["@type"].rsplit("/", 1)[1]: d for d in status["details"]}
    violations = kinds["google.rpc.BadRequest"]["fieldViolations"]
    assert violations == [{"field": "params.width", "description": "must be <= 64"}]
    assert kinds["google.rpc.RequestInfo"]["requestId"] == reply.headers["x-request-id"]
    # Malformed JSON never reaches a service.
    broken = post_json(url(sleepy_stack, "TextToImage"), {"params": {"prompt": 5}})
    assert broken.status == 400
    # Health for curl users too.
    health_url = f"http://{sleepy_stack.address}/grpc.health.v1.Health/Check"
    health = post_json(health_url, {"service": T2I})
    assert health.json() == {"status": "SERVING"}


def test_client_deadline_reaches_the_service(sleepy_stack: Stack) -> None:
    """Envoy passes grpc-timeout on unchanged: the service itself ends the 10 s job after 1 s,
    while this client would wait much longer."""
    started = time.monotonic()
    reply = post_json(
        url(sleepy_stack, "TextToImage"),
        {"params": {"prompt": "slow", "numInferenceSteps": 50}},
        timeout=30,
        headers={"grpc-timeout": "1S"},
    )
    elapsed = time.monotonic() - started
    assert reply.json()["code"] == 4, reply.body  # DEADLINE_EXCEEDED, from the service
    assert reply.status == 504
    assert 0.9 < elapsed < 5


def _frames(payload: bytes) -> list[tuple[int, bytes]]:
    frames, offset = [], 0
    while offset < len(payload):
        flag, size = struct.unpack(">BI", payload[offset : offset + 5])
        frames.append((flag, payload[offset + 5 : offset + 5 + size]))
        offset += 5 + size
    return frames


def test_grpc_web_text_mode(sleepy_stack: Stack) -> None:
    """grpc-web-text (base64 frames, what XHR-only clients use) in and out."""
    message = t2i_request(steps=2).SerializeToString()
    body = base64.b64encode(struct.pack(">BI", 0, len(message)) + message)
    request = urllib.request.Request(
        url(sleepy_stack, "StreamTextToImage"),
        data=body,
        method="POST",
        headers={
            "content-type": "application/grpc-web-text",
            "accept": "application/grpc-web-text",
            "x-grpc-web": "1",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert reply.headers["content-type"].startswith("application/grpc-web-text")
        raw = reply.read()
    # Each chunk is base64 on its own (padding may sit between chunks): decode piecewise.
    decoded = b"".join(
        base64.b64decode(part + b"=" * (-len(part) % 4))
        for part in raw.replace(b"=", b"=\n").split()
        if part
    )
    frames = _frames(decoded)
    parse = t2i_pb2.StreamTextToImageResponse.FromString
    events = [parse(data) for flag, data in frames if flag == 0]
    assert [e.WhichOneof("event") for e in events][-1] == "result"
    trailer = next(data for flag, data in frames if flag & 0x80)
    assert b"grpc-status:0" in trailer.replace(b" ", b"")


def test_cors_preflight(sleepy_stack: Stack, web_server) -> None:
    def preflight(origin: str) -> dict[str, str]:
        request = urllib.request.Request(
            url(sleepy_stack, "StreamTextToImage"),
            method="OPTIONS",
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type,x-grpc-web,mmserve-replica",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            return {k.lower(): v for k, v in reply.headers.items()}

    allowed = preflight(web_server.origin)
    assert allowed["access-control-allow-origin"] == web_server.origin
    assert "mmserve-replica" in allowed["access-control-allow-headers"]
    refused = preflight("http://evil.example")
    assert "access-control-allow-origin" not in refused
