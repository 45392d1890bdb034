"""Per-call facts shared by the interceptor and the code a call runs (a contextvar: each gRPC call
runs in its own task, and the interceptor wraps the handler in that same task)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from dataclasses import dataclass, field

REQUEST_ID_HEADER = "x-request-id"
JOB_ID_HEADER = "mmserve-job-id"


@dataclass
class CallInfo:
    method: str
    request_id: str
    key_id: str = ""
    peer: str = ""
    started: float = field(default_factory=time.monotonic)
    queue_seconds: float | None = None
    job_id: str = ""
    # gRPC sends initial metadata once per call; an RPC that runs several jobs announces the
    # first one, and the status must wait until that write is done (see settle_header).
    job_header: asyncio.Future[None] | None = None

    async def settle_header(self) -> None:
        if self.job_header is not None:
            await asyncio.gather(self.job_header, return_exceptions=True)


_current: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar(
    "mmserve_call", default=None
)


def current_call() -> CallInfo | None:
    return _current.get()


def bind_call(info: CallInfo) -> contextvars.Token[CallInfo | None]:
    return _current.set(info)


def unbind_call(token: contextvars.Token[CallInfo | None]) -> None:
    # A stream whose client went away is closed by grpc from another task, in another context;
    # the call's own context is discarded with it, so there is nothing to reset.
    with contextlib.suppress(ValueError):
        _current.reset(token)
