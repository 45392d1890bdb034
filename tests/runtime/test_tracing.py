"""Tracing through a real server: one trace per call, the caller's traceparent as its parent,
a span per step (prepare on the CPU pool, queue, run on the device thread, render) with the
call's context current on the threads that run them, errors marked, the trace id in the access
log; and nothing at all with tracing off."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from services.runtime.config import load_settings
from services.runtime.executor import JobContext
from services.runtime.server import Capability, ServiceServer
from services.runtime.tracing import otlp_endpoint
from tests.runtime.test_toy_capability import Echo as EchoStub
from tests.support.echo_service import (
    SERVICE,
    Echo,
    EchoEngine,
    EchoRequest,
    EchoSettings,
    Shout,
    echo_pb2,
)
from tests.support.servers import LOOPBACK, health_status, running_server

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
# The span current on the thread that ran each step, by request text.
SEEN: dict[str, dict[str, int]] = {}


def _current_span_id() -> int:
    return trace.get_current_span().get_span_context().span_id


class TracedEcho(Echo):
    """Echo with a prepare step; "boom" fails on the device."""

    def prepare(self, request: EchoRequest) -> EchoRequest:
        SEEN.setdefault(request.text, {})["prepare"] = _current_span_id()
        return request

    def run(self, prepared: EchoRequest, ctx: JobContext) -> str:
        SEEN.setdefault(prepared.text, {})["run"] = _current_span_id()
        if prepared.text == "boom":
            raise RuntimeError("engine exploded (simulated)")
        return super().run(prepared, ctx)


class TracedShout(Shout):
    def prepare(self, request: list[str]) -> list[str]:
        return request


CAPABILITY = Capability(
    name="echo",
    service_names=(SERVICE,),
    settings_cls=EchoSettings,
    create_engine=EchoEngine,
    operations=lambda runtime: {
        "Echo": TracedEcho(runtime),
        "StreamEcho": TracedEcho(runtime),
        "Shout": TracedShout(runtime),
    },
)


@asynccontextmanager
async def traced_server(
    exporter: InMemorySpanExporter, argv: Sequence[str] = ()
) -> AsyncIterator[ServiceServer]:
    """An in-process server whose spans also go to `exporter` (no OTLP endpoint needed)."""
    settings = load_settings(CAPABILITY.settings_cls, [*LOOPBACK, *argv])
    server = ServiceServer(CAPABILITY, settings, span_exporter=exporter)
    await server.start()
    try:
        await asyncio.wait_for(server.wait_loaded(), timeout=120)
        yield server
    finally:
        await asyncio.wait_for(server.drain_and_stop(), timeout=60)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def traced(exporter):
    async with traced_server(exporter, ["--batch-max-wait-ms", "200"]) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield server, EchoStub(channel)


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The access log's records as they are logged (their fields)."""
    caplog.set_level(logging.INFO, logger="mmserve.access")
    records: list[dict[str, Any]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(dict(record.msg.fields))  # type: ignore[union-attr]

    handler = Keep()
    logger = logging.getLogger("mmserve.access")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


async def spans_of(
    exporter: InMemorySpanExporter, trace_id: int, count: int, timeout: float = 10
) -> list[ReadableSpan]:
    """The trace's spans once `count` have ended (a stream's server span ends after its last
    message is read)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.02)


def by_name(spans: list[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        named.setdefault(span.name, []).append(span)
    return named


def traceparent(trace_id: str = TRACE_ID, sampled: bool = True) -> tuple[tuple[str, str], ...]:
    return (("traceparent", f"00-{trace_id}-{PARENT_ID}-{'01' if sampled else '00'}"),)


async def test_a_unary_call_is_one_trace_under_the_callers_span(traced, exporter, access) -> None:
    _server, stub = traced
    call = stub.echo(
        echo_pb2.EchoRequest(text="hello tracing", steps=2, step_seconds=0.01),
        metadata=traceparent(),
    )
    await call
    job_id = dict(await call.trailing_metadata())["mmserve-job-id"]
    spans = by_name(await spans_of(exporter, int(TRACE_ID, 16), 5))
    assert sorted(spans) == ["prepare", "queue", "render", "run", f"{SERVICE}/Echo"]
    (root,) = spans[f"{SERVICE}/Echo"]
    # Envoy's span (the traceparent's) is the parent of the service's.
    assert root.kind is SpanKind.SERVER
    assert root.parent is not None
    assert root.parent.span_id == int(PARENT_ID, 16)
    assert root.attributes["rpc.system"] == "grpc"
    assert root.attributes["rpc.service"] == SERVICE
    assert root.attributes["rpc.method"] == "Echo"
    assert root.attributes["rpc.grpc.status_code"] == 0
    assert root.attributes["mmserve.job_id"] == job_id
    assert root.status.status_code is StatusCode.UNSET
    assert root.resource.attributes["service.name"] == "mmserve-echo"
    steps = [spans[name][0] for name in ("prepare", "queue", "run", "render")]
    for span in steps:
        assert span.parent is not None
        assert span.parent.span_id == root.context.span_id
        assert span.status.status_code is StatusCode.UNSET
    prepare, queue, run, render = steps
    assert queue.attributes["mmserve.job_id"] == run.attributes["mmserve.job_id"] == job_id
    assert run.attributes["mmserve.batch_size"] == 1
    assert run.attributes["mmserve.job_kind"] == "echo"
    # In order, and inside the call (timestamps in ns; the queue ends when the run starts).
    assert root.start_time <= prepare.start_time <= prepare.end_time <= queue.start_time
    assert queue.end_time <= run.start_time <= run.end_time <= render.start_time
    assert render.end_time <= root.end_time
    # The step's span was current on the CPU pool and on the device thread.
    assert SEEN["hello tracing"] == {"prepare": prepare.context.span_id, "run": run.context.span_id}
    (record,) = [r for r in access if r["method"].endswith("/Echo")]
    assert record["trace_id"] == TRACE_ID
    assert record["job_id"] == job_id


async def test_a_stream_is_traced_and_a_call_without_traceparent_starts_a_trace(
    traced, exporter, access
) -> None:
    _server, stub = traced
    async for _ in stub.stream_echo(echo_pb2.EchoRequest(text="a stream", steps=2)):
        pass
    (record,) = [r for r in access if r["method"].endswith("/StreamEcho")]
    trace_id = int(record["trace_id"], 16)
    spans = by_name(await spans_of(exporter, trace_id, 5))
    assert sorted(spans) == ["prepare", "queue", "render", "run", f"{SERVICE}/StreamEcho"]
    (root,) = spans[f"{SERVICE}/StreamEcho"]
    assert root.parent is None
    assert root.attributes["mmserve.job_id"] == record["job_id"]


async def test_a_batch_gives_each_job_a_run_span_with_the_batch_size(traced, exporter) -> None:
    server, stub = traced
    calls = [
        stub.shout(echo_pb2.ShoutRequest(texts=[f"caller {i}"]), metadata=traceparent(f"{i:032x}"))
        for i in range(1, 4)
    ]
    replies = await asyncio.gather(*calls)
    sizes = server.runtime.engine_as(EchoEngine).device_calls
    assert max(sizes) >= 2  # at least two callers shared a device call
    for i, reply in enumerate(replies, start=1):
        spans = by_name(await spans_of(exporter, i, 5))
        (run,) = spans["run"]
        (queue,) = spans["queue"]
        (root,) = spans[f"{SERVICE}/Shout"]
        assert run.parent is not None
        assert run.parent.span_id == root.context.span_id
        assert run.attributes["mmserve.batched"] is True
        assert run.attributes["mmserve.batch_size"] == reply.usage.batch_size
        assert run.attributes["mmserve.job_id"] == queue.attributes["mmserve.job_id"]
        assert queue.end_time == run.start_time


async def test_a_failed_call_marks_its_spans_as_errors(traced, exporter, access) -> None:
    server, stub = traced
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.echo(echo_pb2.EchoRequest(text="boom", steps=1), metadata=traceparent())
    assert failed.value.code() is grpc.StatusCode.INTERNAL
    spans = by_name(await spans_of(exporter, int(TRACE_ID, 16), 5))
    (root,) = spans[f"{SERVICE}/Echo"]
    (run,) = spans["run"]
    assert root.status.status_code is StatusCode.ERROR
    assert root.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]
    assert run.status.status_code is StatusCode.ERROR
    assert "engine exploded" in (run.status.description or "")
    assert any(event.name == "exception" for event in run.events)
    # A caller's mistake is its answer, not the server's error (OpenTelemetry's gRPC rules).
    other = "0af7651916cd43dd8448eb211c80319c"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.echo(echo_pb2.EchoRequest(text=""), metadata=traceparent(other))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    (root,) = await spans_of(exporter, int(other, 16), 1)
    assert root.status.status_code is StatusCode.UNSET
    assert root.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert server.runtime.state.name == "READY"


async def test_an_unsampled_caller_records_nothing_but_the_log_keeps_its_trace_id(
    traced, exporter, access
) -> None:
    _server, stub = traced
    await stub.echo(echo_pb2.EchoRequest(text="quiet"), metadata=traceparent(sampled=False))
    await asyncio.sleep(0.1)
    assert exporter.get_finished_spans() == ()
    (record,) = [r for r in access if r["method"].endswith("/Echo")]
    assert record["trace_id"] == TRACE_ID


async def test_probes_are_not_traced(traced, exporter) -> None:
    server, _stub = traced
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        await health_status(channel, SERVICE)
    await asyncio.sleep(0.1)
    assert exporter.get_finished_spans() == ()


async def test_with_tracing_off_nothing_is_traced_or_logged(access) -> None:
    """No endpoint: the server holds no tracer, and a process-wide provider (what an engine's
    own OpenTelemetry calls would reach) sees no span of any call."""
    seen = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not hasattr(provider, "add_span_processor"):
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        provider = TracerProvider()
        trace.set_tracer_provider(provider)
        provider = trace.get_tracer_provider()
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider.add_span_processor(SimpleSpanProcessor(seen))  # type: ignore[attr-defined]
    async with running_server(CAPABILITY) as server:
        assert server.tracing is None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = EchoStub(channel)
            await stub.echo(echo_pb2.EchoRequest(text="untraced"), metadata=traceparent())
            async for _ in stub.stream_echo(echo_pb2.EchoRequest(text="untraced", steps=1)):
                pass
            await stub.shout(echo_pb2.ShoutRequest(texts=["untraced"]))
    assert seen.get_finished_spans() == ()
    assert SEEN["untraced"]["run"] == 0  # no span current on the device thread
    assert len(access) == 3
    assert all("trace_id" not in record for record in access)


def test_the_endpoint_comes_from_settings_then_the_opentelemetry_variables() -> None:
    assert otlp_endpoint("", {}) == ""
    assert otlp_endpoint("collector:4317", {}) == "http://collector:4317"
    assert otlp_endpoint("https://c:4317", {}) == "https://c:4317"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317"}
    assert otlp_endpoint("", env) == "http://a:4317"
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "http://t:4317"
    assert otlp_endpoint("", env) == "http://t:4317"
    assert otlp_endpoint("", {**env, "OTEL_TRACES_EXPORTER": "none"}) == ""
    assert otlp_endpoint("http://s:4317", {**env, "OTEL_TRACES_EXPORTER": "none"}) == (
        "http://s:4317"
    )
    assert otlp_endpoint("http://s:4317", {"OTEL_SDK_DISABLED": "true"}) == ""


async def test_the_sample_ratio_applies_to_calls_no_caller_decided(exporter, access) -> None:
    async with traced_server(exporter, ["--trace-sample-ratio", "0"]) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = EchoStub(channel)
            await stub.echo(echo_pb2.EchoRequest(text="ratio zero"))
            await stub.echo(echo_pb2.EchoRequest(text="ratio zero"), metadata=traceparent())
    names = [span.name for span in exporter.get_finished_spans()]
    # Only the call whose caller sampled it (the edge decides for calls through Envoy).
    assert names.count(f"{SERVICE}/Echo") == 1
    assert {span.context.trace_id for span in exporter.get_finished_spans()} == {int(TRACE_ID, 16)}
    assert all(record.get("trace_id") for record in access)
