"""OpenTelemetry traces of calls: one server span per RPC, its parent the caller's W3C
`traceparent` (Envoy's span when the call came through the edge), and a child span for each
step the runtime drives: `prepare` (CPU pool), `queue` (waiting for the device), `run` (the
device) and `render`.

Off unless an OTLP endpoint is configured (`--otlp-endpoint`, else the standard
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT). Only then is the SDK
imported and a batch processor exporting over OTLP/gRPC made. Off, a call meets no SDK object:
the interceptor holds no `Tracing`, and `current()` (one contextvar read) finds no call trace, so
every step hook returns a shared no-op.

Threads: the call's context crosses to the CPU pool (`in_call_context`) and to the device thread
(`on_device`) explicitly, attached there for the length of the work, so spans an engine or a
preprocessing library makes with the OpenTelemetry API nest under the step that runs them.

Micro-batches: one device call can serve several calls' jobs. Each job gets a `run` span in
its own call's trace (one span per job, rather than one span per device call with links), timed
by the shared device call and carrying `mmserve.batch_size`; a trace then reads the same whether
its job ran alone or batched. Those spans and every `queue` span are recorded when the job ends,
from the executor's own timestamps, so the executor knows nothing of tracing.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

    from services.runtime.config import ServiceSettings
    from services.runtime.job_events import JobSnapshot

log = logging.getLogger("mmserve.tracing")
T = TypeVar("T")

INSTRUMENTATION = "mmserve.runtime"
# OpenTelemetry's gRPC conventions: a server span is an error only for the codes that are the
# server's fault; INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED... are the caller's answer.
SERVER_ERROR_CODES = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
_TRUE = ("1", "true", "yes")


def otlp_endpoint(configured: str, environ: Mapping[str, str] = os.environ) -> str:
    """The OTLP/gRPC endpoint traces go to, "" for none (tracing off). A configured endpoint
    wins; otherwise the OpenTelemetry variables, unless OTEL_TRACES_EXPORTER is "none".
    OTEL_SDK_DISABLED=true turns tracing off either way. A bare host:port means plaintext
    (http://), as a collector on the same host or pod usually is."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return ""
    endpoint = configured.strip()
    if not endpoint and environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() != "none":
        endpoint = (
            environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
            or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        )
    if endpoint and "://" not in endpoint:
        endpoint = "http://" + endpoint
    return endpoint


@dataclass(frozen=True)
class CallTrace:
    """The trace of the call being served: the tracer and the context new steps are children
    of (the server span's, or the step now running)."""

    tracer: Tracer
    context: Context


_current: contextvars.ContextVar[CallTrace | None] = contextvars.ContextVar(
    "mmserve_trace", default=None
)


def current() -> CallTrace | None:
    """The call trace of this task; None when tracing is off or the call is not sampled."""
    return _current.get()


class _Step:
    """A span for one step of the call; the step's code runs with it as the current parent."""

    __slots__ = ("_span", "_token", "_trace")

    def __init__(self, trace: CallTrace, name: str, kind: str) -> None:
        from opentelemetry import trace as otel

        self._span = trace.tracer.start_span(
            name, context=trace.context, attributes={"mmserve.job_kind": kind} if kind else None
        )
        self._trace = CallTrace(trace.tracer, otel.set_span_in_context(self._span, trace.context))
        self._token: contextvars.Token[CallTrace | None] | None = None

    def __enter__(self) -> None:
        self._token = _current.set(self._trace)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: Any
    ) -> None:
        if self._token is not None:
            with contextlib.suppress(ValueError):
                _current.reset(self._token)
        if error is not None:
            _fail(self._span, error)
        self._span.end()


_NO_STEP = contextlib.nullcontext()


def step(name: str, kind: str = "") -> contextlib.AbstractContextManager[None]:
    """`with step("render"):` traces the block as a child of the call's span; a shared no-op
    when the call is not traced."""
    trace = _current.get()
    if trace is None:
        return _NO_STEP
    return _Step(trace, name, kind)


def in_call_context(fn: Callable[..., T]) -> Callable[..., T]:
    """`fn` to run on another thread (the CPU pool) inside the current step's context; `fn`
    itself when the call is not traced."""
    trace = _current.get()
    if trace is None:
        return fn

    def attached(*args: Any) -> T:
        from opentelemetry import context as otel_context

        token = otel_context.attach(trace.context)
        try:
            return fn(*args)
        finally:
            otel_context.detach(token)

    return attached


def on_device(fn: Callable[[Any], T], kind: str) -> Callable[[Any], T]:
    """A plain job's work function, traced as the call's `run` span on the device thread (the
    span current there while it runs); `fn` itself when the call is not traced."""
    trace = _current.get()
    if trace is None:
        return fn

    def run(ctx: Any) -> T:
        from opentelemetry import context as otel_context
        from opentelemetry import trace as otel

        attributes = {"mmserve.job_id": ctx.job_id, "mmserve.job_kind": kind}
        span = trace.tracer.start_span("run", context=trace.context, attributes=attributes)
        span.set_attribute("mmserve.batch_size", 1)
        token = otel_context.attach(otel.set_span_in_context(span, trace.context))
        try:
            return fn(ctx)
        except BaseException as error:
            _fail(span, error)
            raise
        finally:
            otel_context.detach(token)
            span.end()

    return run


def job_ended(trace: CallTrace, job: JobSnapshot, batched: bool) -> None:
    """Records the `queue` span of a job that ended (and the `run` span of a batched one) from
    its timestamps."""
    attributes = {"mmserve.job_id": job.job_id, "mmserve.job_kind": job.kind}
    created = _ns(job.create_time)
    started = _ns(job.start_time) if job.start_time is not None else None
    ended = _ns(job.end_time) if job.end_time is not None else None
    queue = trace.tracer.start_span(
        "queue", context=trace.context, attributes=attributes, start_time=created
    )
    if started is None and job.error is not None:  # never reached the device
        _fail(queue, job.error)
    queue.end(end_time=started or ended)
    if not batched or started is None:
        return
    run = trace.tracer.start_span(
        "run",
        context=trace.context,
        attributes={**attributes, "mmserve.batch_size": job.batch_size, "mmserve.batched": True},
        start_time=started,
    )
    if job.error is not None:
        _fail(run, job.error)
    run.end(end_time=ended)


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _fail(span: Span, error: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


class CallSpan:
    """The server span of one call, from the interceptor's start of the call to its status."""

    __slots__ = ("_token", "span", "trace_id")

    def __init__(self, span: Span, token: contextvars.Token[CallTrace | None] | None) -> None:
        self.span = span
        self._token = token
        context = span.get_span_context()
        # The id the access log carries: valid even when this call is not sampled, so logs
        # still join the edge's spans.
        self.trace_id = format(context.trace_id, "032x") if context.is_valid else ""

    def end(self, code: Any, job_id: str, error: BaseException | None) -> None:
        """Ends the span with the call's gRPC status (`code`: a grpc.StatusCode)."""
        from opentelemetry.trace import Status, StatusCode

        if self._token is not None:
            with contextlib.suppress(ValueError):  # a stream closed from another task
                _current.reset(self._token)
        span = self.span
        if span.is_recording():
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if job_id:
                span.set_attribute("mmserve.job_id", job_id)
            if code.name in SERVER_ERROR_CODES:
                if error is not None:
                    span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, code.name))
        span.end()


class Tracing:
    """A service's tracer: a provider of its own (tests run several servers in one process),
    made global only by the process entry point (`install_global`)."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import propagate
        from opentelemetry import trace as otel

        self.provider = provider
        self.tracer = provider.get_tracer(INSTRUMENTATION)
        self._extract = propagate.extract
        self._in_context = otel.set_span_in_context
        self._server = otel.SpanKind.SERVER

    @classmethod
    def from_settings(
        cls, settings: ServiceSettings, capability: str, exporter: SpanExporter | None = None
    ) -> Tracing | None:
        """The service's tracing, or None (off) when no endpoint is configured and no
        `exporter` given (tests pass an in-memory one; it is exported to synchronously)."""
        endpoint = otlp_endpoint(settings.otlp_endpoint)
        if not endpoint and exporter is None:
            return None
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        name = (
            settings.trace_service_name
            or os.environ.get("OTEL_SERVICE_NAME", "").strip()
            or f"mmserve-{capability}"
        )
        ratio = settings.trace_sample_ratio
        provider = TracerProvider(
            resource=Resource.create({"service.name": name, "mmserve.capability": capability}),
            # Unset: OTEL_TRACES_SAMPLER (default parent-based, always on).
            sampler=None if ratio is None else ParentBased(TraceIdRatioBased(ratio)),
        )
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        if endpoint:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
            log.info("tracing to %s as %s", endpoint, name)
        return cls(provider)

    def start_call(self, method: str, metadata: Mapping[str, Any], request_id: str) -> CallSpan:
        """Starts the server span of a call (a child of the caller's traceparent, if any) and
        makes it the parent of the call's steps in this task."""
        parent = self._extract(metadata)
        name = method.lstrip("/")
        service, _, rpc = name.rpartition("/")
        span = self.tracer.start_span(
            name,
            context=parent,
            kind=self._server,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": rpc,
                "mmserve.request_id": request_id,
            },
        )
        token = None
        if span.is_recording():
            token = _current.set(CallTrace(self.tracer, self._in_context(span, parent)))
        return CallSpan(span, token)

    def install_global(self) -> None:
        """Makes this provider the process's, for spans made with the OpenTelemetry API."""
        from opentelemetry import trace as otel

        otel.set_tracer_provider(self.provider)

    def close(self) -> None:
        """Exports what is buffered and stops the exporter (blocking: call it off the loop)."""
        self.provider.shutdown()
