"""What every endpoint does around its gRPC call: metadata (the caller's API key and request
id pass through), the deadline, the client going away (which cancels the call, and with it the
service's job), and server-sent events."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import anyio
import grpc
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.openai.errors import OpenAIError, ParamMapper, from_grpc

# Headers that reach the services as gRPC metadata: the key is checked by the service
# (services/runtime/security.py), the request id ties the edge's, this service's and the
# service's logs together, and the W3C trace context makes the service's spans children of
# the edge's (services/runtime/tracing.py).
PASSED_HEADERS = ("authorization", "x-request-id", "traceparent", "tracestate")
TIMEOUT_HEADER = "x-request-timeout"
# The service's job id, as the gRPC services send it (Envoy's access log shows it too).
JOB_HEADER = "mmserve-job-id"


async def job_id(call: Any) -> str:
    """The job id a unary call's response headers carry."""
    return str(dict(await call.initial_metadata() or ()).get(JOB_HEADER, ""))


def metadata(request: Request) -> tuple[tuple[str, str], ...]:
    headers = request.headers
    return tuple((name, headers[name]) for name in PASSED_HEADERS if name in headers)


def timeout(request: Request, default: float) -> float:
    """The call's deadline in seconds: the server's, or less when x-request-timeout asks."""
    asked = request.headers.get(TIMEOUT_HEADER)
    if asked is None:
        return default
    try:
        value = float(asked)
    except ValueError:
        raise OpenAIError(
            400, f"{TIMEOUT_HEADER}: expected seconds, got {asked!r}", param=TIMEOUT_HEADER
        ) from None
    if value <= 0:
        raise OpenAIError(400, f"{TIMEOUT_HEADER}: must be > 0", param=TIMEOUT_HEADER)
    return min(value, default)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def unary(request: Request, call: Any, param_of: ParamMapper | None = None) -> Any:
    """The reply of a unary gRPC call; if the client disconnects first the call is cancelled
    (the service cancels its job) and the handler ends with CancelledError."""
    watch = asyncio.ensure_future(_disconnected(request.receive))

    def client_left(task: asyncio.Future[None]) -> None:
        if not task.cancelled():
            call.cancel()

    watch.add_done_callback(client_left)
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc, param_of) from None
    finally:
        watch.cancel()


async def first(call: Any, param_of: ParamMapper | None = None) -> Any:
    """The first event of a stream, so an error before any output gets its HTTP status."""
    try:
        event = await call.read()
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc, param_of) from None
    if event is grpc.aio.EOF:
        raise OpenAIError(502, "the service ended the stream without a reply", type="server_error")
    return event


def sse(data: Any) -> bytes:
    """One server-sent event; `data` is a JSON-able dict or a pydantic model."""
    text = (
        data.model_dump_json(exclude_none=True)
        if hasattr(data, "model_dump_json")
        else (json.dumps(data, separators=(",", ":")))
    )
    return b"data: " + text.encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"  # an SSE comment: clients skip it


def error_event(error: OpenAIError) -> bytes:
    return sse(error.body())


class EventStream(StreamingResponse):
    """text/event-stream that always watches for the client leaving, also while nothing is
    sent (a queued job): the body iterator is then cancelled, and its `finally` cancels the
    gRPC call. (Starlette relies on a failed send alone under ASGI 2.4.)"""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        on_close: Callable[[], None],
        media_type: str = "text/event-stream",
        job_id: str = "",
    ) -> None:
        headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
        if job_id:
            headers[JOB_HEADER] = job_id
        super().__init__(content, media_type=media_type, headers=headers)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def run(func: Callable[[], Awaitable[None]]) -> None:
                    with contextlib.suppress(OSError):  # the client went away mid-send
                        await func()
                    group.cancel_scope.cancel()

                group.start_soon(run, partial(self.stream_response, send))
                await run(partial(_disconnected, receive))
        finally:
            self.on_close()


def sse_named(event: str, data: dict[str, Any]) -> bytes:
    """A server-sent event with an `event:` name, as OpenAI's image streams send them."""
    text = json.dumps(data, separators=(",", ":"))
    return f"event: {event}\ndata: {text}\n\n".encode()
