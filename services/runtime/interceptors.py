"""One server interceptor for what every call shares: request id, API-key auth, rate limit,
error mapping to rich statuses, the JSON access log and call metrics.

It wraps each handler's behaviour (rather than only inspecting the call) so that exceptions from
servicers and engines are mapped in one place and the access log sees the final code.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.runtime import errors
from services.runtime.calls import (
    REQUEST_ID_HEADER,
    CallInfo,
    bind_call,
    unbind_call,
    wants_early_job_id,
)
from services.runtime.logs import EventLine
from services.runtime.metrics import ServiceMetrics
from services.runtime.security import KeyStore, RateLimiter
from services.runtime.status import code_of, to_grpc_status
from services.runtime.tracing import CallSpan, Tracing

access_log = logging.getLogger("mmserve.access")
error_log = logging.getLogger("mmserve.errors")

# Probes and tooling must work without keys and must not spend a caller's rate budget.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# A refused surplus call is retried after this: bursts past the limit clear in well under a second
# when the calls are cheap, and a client with many slow calls in flight backs off further anyway.
CONCURRENCY_RETRY_SECONDS = 0.5


class _Status(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[Any, ...]) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing


class _Unparsable:
    """Stands in for a request whose bytes did not parse, so the handler (inside the call's
    error mapping) can answer INVALID_ARGUMENT; a deserializer that raises makes grpc answer
    UNKNOWN and log a traceback instead."""

    def __init__(self, error: Exception) -> None:
        self.reason = f"{type(error).__name__}: {error}"


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return _Unparsable(exc)

    return parse


def _check_parsed(request: Any, method: str) -> None:
    if isinstance(request, _Unparsable):
        raise errors.InvalidArgument(
            f"the request of {method} does not parse as protobuf: {request.reason}"
        )


class _CallMetrics:
    __slots__ = ("count", "seconds")

    def __init__(self, count: Any, seconds: Any) -> None:
        self.count = count
        self.seconds = seconds

    def observe(self, seconds: float) -> None:
        self.count.inc()
        self.seconds.observe(seconds)


class ServingInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        keys: KeyStore,
        limiter: RateLimiter,
        metrics: ServiceMetrics | None = None,
        open_probes: bool = True,
        max_concurrent_calls: int = 0,
        tracing: Tracing | None = None,
    ) -> None:
        self._keys = keys
        # None when tracing is off: calls then meet no tracing code beyond this check.
        self._tracing = tracing
        self._limiter = limiter
        self._metrics = metrics
        self._open_probes = open_probes
        # Calls in flight that count against max_concurrent_calls (open probes do not, so that
        # health checks answer during a burst); 0 means no limit.
        self._max_calls = max_concurrent_calls
        self._calls_in_flight = 0
        # Prometheus label lookups cost more than the update itself; each (method, code) pair
        # resolves its children once.
        self._children: dict[tuple[str, grpc.StatusCode], _CallMetrics] = {}

    def _call_metrics(self, method: str, code: grpc.StatusCode) -> _CallMetrics:
        children = self._children.get((method, code))
        if children is None:
            assert self._metrics is not None
            children = _CallMetrics(
                self._metrics.requests.labels(method, code.name),
                self._metrics.request_seconds.labels(method),
            )
            self._children[(method, code)] = children
        return children

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        metadata = dict(handler_call_details.invocation_metadata or ())
        open_method = self._open_probes and method.startswith(OPEN_PREFIXES)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, metadata, open_method),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, metadata, open_method),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None and not open_method:
            # Reflection is the only bidi stream served; it needs a key when probes are closed.
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_bidi(handler.stream_stream, method, metadata),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # open reflection passes through untouched

    # --- the shared steps ---
    def _new_call(self, method: str, metadata: dict[str, Any], context: Any) -> CallInfo:
        given = metadata.get(REQUEST_ID_HEADER)
        valid = isinstance(given, str) and _REQUEST_ID_RE.match(given)
        info = CallInfo(method=method, request_id=given if valid else uuid.uuid4().hex)
        info.peer = context.peer() or ""
        return info

    def _admit(self, info: CallInfo, metadata: dict[str, Any]) -> None:
        """Auth, then rate limit (per key, or per peer host when auth is off)."""
        if self._keys.enabled:
            try:
                info.key_id = self._keys.authenticate(metadata.get("authorization"))
            except errors.Unauthenticated:
                self._reject("auth")
                raise
        try:
            self._limiter.acquire(info.key_id or info.peer.rsplit(":", 1)[0])
        except errors.ResourceExhausted:
            self._reject("rate_limit")
            raise

    def _take_call_slot(self) -> None:
        """Refuses a call beyond max_concurrent_calls with RESOURCE_EXHAUSTED and a retry hint,
        instead of leaving it to grpc core, which cancels surplus calls without a word."""
        if self._max_calls and self._calls_in_flight >= self._max_calls:
            self._reject("concurrency")
            raise errors.ResourceExhausted(
                f"the server is handling {self._calls_in_flight} calls, its limit "
                f"(max_concurrent_calls={self._max_calls}); retry shortly",
                CONCURRENCY_RETRY_SECONDS,
            )
        self._calls_in_flight += 1

    def _reject(self, reason: str) -> None:
        if self._metrics:
            self._metrics.rejected.labels(reason).inc()

    async def _fail(self, context: Any, info: CallInfo, exc: BaseException) -> grpc.StatusCode:
        code = code_of(exc)
        if code is grpc.StatusCode.INTERNAL:
            error_log.error(
                "internal error in %s (request id %s)", info.method, info.request_id, exc_info=exc
            )
        if isinstance(exc, errors.QueueFull):
            self._reject("queue_full")
        status = to_grpc_status(exc, info.request_id)
        trailing = (*status.trailing_metadata, *info.trailers())
        await context.abort_with_status(_Status(status.code, status.details, trailing))
        return code  # unreachable: abort raises

    def _finish(
        self, info: CallInfo, code: grpc.StatusCode, open_method: bool, trace_id: str = ""
    ) -> None:
        seconds = time.monotonic() - info.started
        if self._metrics and not open_method:
            self._call_metrics(info.method, code).observe(seconds)
        level = logging.DEBUG if open_method else logging.INFO
        if not access_log.isEnabledFor(level):
            return
        record = {
            "method": info.method,
            "code": code.name,
            "duration_ms": round(seconds * 1000, 2),
            "queue_wait_ms": None
            if info.queue_seconds is None
            else round(info.queue_seconds * 1000, 2),
            "request_id": info.request_id,
            "job_id": info.job_id or None,
            "key_id": info.key_id or None,
            "peer": info.peer,
        }
        if trace_id:
            record["trace_id"] = trace_id
        access_log.log(level, EventLine(record))

    @contextlib.asynccontextmanager
    async def _call(
        self,
        method: str,
        metadata: dict[str, Any],
        context: Any,
        open_method: bool,
        unary: bool = False,
    ) -> AsyncIterator[CallInfo]:
        """Admission, error mapping, access log and metrics around one call's handler. A
        unary call's job-id header waits for its result unless the client asked for it early
        (see calls.EARLY_JOB_ID_HEADER); the trailers always carry it."""
        info = self._new_call(method, metadata, context)
        token = bind_call(info)
        code = grpc.StatusCode.OK
        holds_slot = False
        # Probes are not traced: the edge checks every replica each second.
        span: CallSpan | None = None
        if self._tracing is not None and not open_method:
            span = self._tracing.start_call(method, metadata, info.request_id)
        failure: BaseException | None = None
        try:
            context.set_trailing_metadata(info.trailers())
            if unary and not wants_early_job_id(metadata):
                info.hold_job_header()
            if not open_method:
                self._take_call_slot()
                holds_slot = True
                self._admit(info, metadata)
            yield info
            await info.settle_header()
            if info.job_id:
                context.set_trailing_metadata(info.trailers())
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception as exc:
            code = code_of(exc)
            failure = exc
            await info.settle_header()
            await self._fail(context, info, exc)
        finally:
            if holds_slot:
                self._calls_in_flight -= 1
            if span is not None:
                span.end(code, info.job_id, failure)
            self._finish(info, code, open_method, span.trace_id if span is not None else "")
            unbind_call(token)

    def _wrap_unary(
        self,
        behaviour: Callable[..., Awaitable[Any]],
        method: str,
        metadata: dict[str, Any],
        open_method: bool,
    ) -> Callable[[Any, Any], Awaitable[Any]]:
        async def handle(request: Any, context: Any) -> Any:
            async with self._call(method, metadata, context, open_method, unary=True) as info:
                _check_parsed(request, method)
                response = await behaviour(request, context)
                await info.send_held_header(context)
                return response

        return handle

    def _wrap_stream(
        self,
        behaviour: Callable[..., Any],
        method: str,
        metadata: dict[str, Any],
        open_method: bool,
    ) -> Callable[[Any, Any], Any]:
        if not inspect.isasyncgenfunction(behaviour):
            # A handler that streams with `await context.write(...)` (grpc's own health Watch)
            # is a coroutine, not an async generator: await it inside the same call scope.
            async def write(request: Any, context: Any) -> None:
                async with self._call(method, metadata, context, open_method):
                    _check_parsed(request, method)
                    await behaviour(request, context)

            return write

        async def handle(request: Any, context: Any) -> AsyncIterator[Any]:
            async with self._call(method, metadata, context, open_method):
                _check_parsed(request, method)
                async for response in behaviour(request, context):
                    yield response

        return handle

    def _wrap_bidi(
        self, behaviour: Callable[..., AsyncIterator[Any]], method: str, metadata: dict[str, Any]
    ) -> Callable[[Any, Any], AsyncIterator[Any]]:
        async def handle(requests: Any, context: Any) -> AsyncIterator[Any]:
            async with self._call(method, metadata, context, False):
                async for response in behaviour(requests, context):
                    yield response

        return handle
