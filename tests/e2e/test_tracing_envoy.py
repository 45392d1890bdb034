"""One trace per call from the edge to the device: a stack started with an OTLP endpoint sends
Envoy's span and the service's spans to a collector (a small OTLP/gRPC receiver here), all with
one trace id, Envoy's span the parent of the service's; both access logs carry the trace id.
Without an endpoint the edge has no tracer."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from gateway.render import EdgeConfig, Endpoint, capability_upstream, render
from gateway.stack import Stack
from mmserve.t2i.v1 import t2i_pb2_grpc
from tests.e2e.conftest import SERVICE_ENV, sleepy_config
from tests.e2e.support import T2I, t2i_request

TRACE_ID = "5af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


@dataclass(frozen=True)
class ReceivedSpan:
    service: str  # the resource's service.name
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, object]


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector that keeps what it is sent."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()

    def Export(self, request, context):
        found = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {
                        a.key: getattr(a.value, a.value.WhichOneof("value") or "string_value")
                        for a in span.attributes
                    }
                    found.append(
                        ReceivedSpan(
                            resource.get("service.name", ""),
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            attributes,
                        )
                    )
        with self._lock:
            self.spans.extend(found)
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [span for span in self.spans if span.trace_id == trace_id]


@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[Receiver, int]]:
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield receiver, port
    finally:
        server.stop(grace=None)


@pytest.fixture(scope="module")
def traced_stack(
    tmp_path_factory: pytest.TempPathFactory, collector: tuple[Receiver, int]
) -> Iterator[Stack]:
    _, port = collector
    config = dataclasses.replace(
        sleepy_config(tmp_path_factory.mktemp("traced-stack")),
        otlp_endpoint=f"http://127.0.0.1:{port}",
        # The services' batch processor sends every 0.1 s instead of every 5 s.
        env={**SERVICE_ENV, "OTEL_BSP_SCHEDULE_DELAY": "100"},
    )
    with Stack(config) as stack:
        stack.wait_ready()
        yield stack


def wait_for_trace(
    receiver: Receiver, trace_id: str, rpc: str = "TextToImage", timeout: float = 30
) -> list[ReceivedSpan]:
    """The trace once Envoy's span and the service's server span have both arrived (Envoy
    flushes its spans every 5 s)."""
    deadline = time.monotonic() + timeout
    while True:
        spans = receiver.of_trace(trace_id)
        services = {span.service for span in spans}
        names = {span.name for span in spans}
        if ("mmserve-edge" in services and f"{T2I}/{rpc}" in names) or (
            time.monotonic() > deadline
        ):
            return spans
        time.sleep(0.1)


def log_lines(path: Path) -> list[dict[str, object]]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            lines.append(value)
    return lines


def _call(stack: Stack, metadata: tuple[tuple[str, str], ...] = ()) -> str:
    """One TextToImage through Envoy; its request id."""
    with grpc.insecure_channel(stack.address) as channel:
        stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
        _, call = stub.TextToImage.with_call(t2i_request(steps=1), metadata=metadata, timeout=30)
    return dict(call.trailing_metadata())["x-request-id"]


def test_envoy_and_the_service_send_one_trace(
    traced_stack: Stack, collector: tuple[Receiver, int]
) -> None:
    receiver, _ = collector
    traceparent = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
    request_id = _call(traced_stack, (("traceparent", traceparent),))
    spans = wait_for_trace(receiver, TRACE_ID)
    edge = [span for span in spans if span.service == "mmserve-edge"]
    assert len(edge) == 1, spans
    (envoy,) = edge
    # The client's span is Envoy's parent, Envoy's the service's.
    assert envoy.parent_id == CLIENT_SPAN
    (server,) = [span for span in spans if span.name == f"{T2I}/TextToImage"]
    assert server.service == "mmserve-sleepy"
    assert server.parent_id == envoy.span_id
    assert server.attributes["mmserve.request_id"] == request_id
    steps = {span.name: span for span in spans if span.parent_id == server.span_id}
    assert {"queue", "run", "render"} <= set(steps)
    assert steps["run"].attributes["mmserve.batch_size"] == 1
    # Both access logs name the trace.
    group = traced_stack.group("t2i")
    service_log = log_lines(group.children[0].log_path)
    assert any(line.get("request_id") == request_id and line.get("trace_id") == TRACE_ID
               for line in service_log)  # fmt: skip
    assert traced_stack.envoy is not None
    deadline = time.monotonic() + 10
    while not any(
        line.get("request_id") == request_id and line.get("trace_id") == TRACE_ID
        for line in log_lines(traced_stack.envoy.log_path)
    ):
        assert time.monotonic() < deadline, traced_stack.envoy.tail()
        time.sleep(0.1)


def test_a_call_without_traceparent_gets_a_trace_at_the_edge(
    traced_stack: Stack, collector: tuple[Receiver, int]
) -> None:
    receiver, _ = collector
    request_id = _call(traced_stack)
    group = traced_stack.group("t2i")
    deadline = time.monotonic() + 10
    trace_id = ""
    while not trace_id:
        for line in log_lines(group.children[0].log_path):
            if line.get("request_id") == request_id:
                trace_id = str(line.get("trace_id") or "")
        assert time.monotonic() < deadline, "no access log line with a trace id"
        time.sleep(0.1)
    spans = wait_for_trace(receiver, trace_id)
    (envoy,) = [span for span in spans if span.service == "mmserve-edge"]
    (server,) = [span for span in spans if span.name == f"{T2I}/TextToImage"]
    assert server.parent_id == envoy.span_id
    assert envoy.parent_id == ""


def test_the_openai_api_passes_the_trace_on(
    traced_stack: Stack, collector: tuple[Receiver, int]
) -> None:
    receiver, _ = collector
    trace_id = "6e0c63257de34c926f9efcd03899ac5d"
    body = {"model": "t2i", "prompt": "a fox", "num_inference_steps": 1}
    request = urllib.request.Request(
        f"{traced_stack.openai_url}/images/generations",
        data=json.dumps(body).encode(),
        headers={
            "content-type": "application/json",
            "traceparent": f"00-{trace_id}-{CLIENT_SPAN}-01",
        },
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        assert reply.status == 200
    spans = wait_for_trace(receiver, trace_id)
    (envoy,) = [span for span in spans if span.service == "mmserve-edge"]
    assert envoy.parent_id == CLIENT_SPAN
    (server,) = [span for span in spans if span.name == f"{T2I}/TextToImage"]
    # gateway.openai makes no span of its own: it passes Envoy's traceparent on.
    assert server.parent_id == envoy.span_id


def test_without_an_endpoint_the_edge_has_no_tracer() -> None:
    upstream = capability_upstream("t2i", (Endpoint("127.0.0.1", 50051),))
    base = EdgeConfig(
        upstreams=(upstream,),
        edge_endpoints=(Endpoint("127.0.0.1", 50050),),
        descriptor_path="/dev/null",
    )
    off = render(base)
    assert "envoy.tracers.opentelemetry" not in off
    assert "%TRACE_ID%" not in off
    on = render(dataclasses.replace(base, otlp_endpoint="http://collector:4317"))
    assert "envoy.tracers.opentelemetry" in on
    assert "%TRACE_ID%" in on
    assert '"collector"' in on  # a hostname: a STRICT_DNS cluster
    with pytest.raises(ValueError, match="host:port"):
        dataclasses.replace(base, otlp_endpoint="http://no-port")
