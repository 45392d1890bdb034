"""The four real capability services (default built-in models) behind one Envoy port:
reflection and health for all of them, and one unary and one streaming call per capability with
grpcurl, HTTP/JSON and the generated Python stubs."""

from __future__ import annotations

import importlib
import json
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.catalog import CAPABILITIES
from gateway.stack import Stack
from tests.e2e.samples import SAMPLES, Sample
from tests.e2e.support import grpcurl, post_json, read_into

NAMES = sorted(SAMPLES)


def test_reflection_lists_every_service(real_stack: Stack) -> None:
    listed = grpcurl(["-plaintext", real_stack.address, "list"])
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == {
        *(spec.service for spec in CAPABILITIES.values()),
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


async def test_health_of_every_service(real_stack: Stack) -> None:
    async with grpc.aio.insecure_channel(real_stack.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", *(spec.service for spec in CAPABILITIES.values())):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name


@pytest.mark.parametrize("name", NAMES)
def test_grpcurl_calls_each_capability(real_stack: Stack, name: str) -> None:
    sample = SAMPLES[name]
    method = f"{sample.spec.service}/{sample.unary}"
    proc = grpcurl(
        ["-plaintext", "-d", json.dumps(sample.request), real_stack.address, method], timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    # grpcurl prints proto field names; the JSON name differs only in case.
    reply = json.loads(proc.stdout)
    assert sample.result_field.lower() in {k.replace("_", "").lower() for k in reply}, reply


@pytest.mark.parametrize("name", NAMES)
def test_http_json_calls_each_capability(real_stack: Stack, name: str) -> None:
    sample = SAMPLES[name]
    base = f"http://{real_stack.address}/{sample.spec.service}"
    unary = post_json(f"{base}/{sample.unary}", sample.request, timeout=120)
    assert unary.status == 200, unary.body
    assert sample.result_field in unary.json(), unary.body
    if sample.stream is not None:
        stream = post_json(f"{base}/{sample.stream}", sample.request, timeout=120)
        assert stream.status == 200, stream.body
        events = stream.json_lines()
        assert "accepted" in events[0], events[0]
        assert sample.final_event in events[-1], events[-1]
    if sample.bad_request is not None:
        bad = post_json(f"{base}/{sample.unary}", sample.bad_request, timeout=60)
        assert bad.status == 400, bad.body
        details = {d["@type"].rsplit("/", 1)[1]: d for d in bad.json()["details"]}
        fields = [v["field"] for v in details["google.rpc.BadRequest"]["fieldViolations"]]
        assert sample.bad_field in fields, bad.body


def _stub_and_request(channel: grpc.aio.Channel, sample: Sample) -> tuple[Any, Any]:
    """The generated stub of the capability, and the sample parsed into its request class."""
    spec = sample.spec
    grpc_module = importlib.import_module(f"{spec.pb2_module}_grpc")
    stub = getattr(grpc_module, f"{spec.descriptor.name}Stub")(channel)
    request_class = GetMessageClass(spec.descriptor.methods_by_name[sample.unary].input_type)
    return stub, json_format.ParseDict(sample.request, request_class())


@pytest.mark.parametrize("name", NAMES)
async def test_python_stubs_call_each_capability(real_stack: Stack, name: str) -> None:
    sample = SAMPLES[name]
    async with grpc.aio.insecure_channel(real_stack.address) as channel:
        stub, request = _stub_and_request(channel, sample)
        call = getattr(stub, sample.unary)(request, timeout=120)
        reply = await call
        assert json_format.MessageToDict(reply).get(sample.result_field), reply
        assert dict(await call.initial_metadata()).get("mmserve-job-id")
        if sample.stream is not None:
            events: list[Any] = []
            await read_into(getattr(stub, sample.stream)(request, timeout=120), events)
            cases = [e.WhichOneof("event") for e in events]
            assert cases[0] == "accepted"
            assert cases[-1] == sample.final_event
            assert len({e.job_id for e in events}) == 1
