"""Per-call facts shared by the interceptor and the code a call runs (a contextvar: each gRPC call
runs in its own task, and the interceptor wraps the handler in that same task)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

REQUEST_ID_HEADER = "x-request-id"
JOB_ID_HEADER = "mmserve-job-id"
# A unary call sends its job id in the response headers the moment the job is accepted only
# when the request carries this header ("1"): a client that cancels from elsewhere needs the id
# while it waits. Otherwise the id goes out with the result (headers and trailers together), so
# the edge can still retry the call on another replica if this one dies while the job runs
# (Envoy retries only before any response header reached it).
EARLY_JOB_ID_HEADER = "mmserve-job-id-early"
_TRUE = ("1", "true", "yes")


def wants_early_job_id(metadata: Mapping[str, Any]) -> bool:
    value = metadata.get(EARLY_JOB_ID_HEADER)
    return isinstance(value, str) and value.strip().lower() in _TRUE


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
    # first one, and the status must wait until that write is done (see settle_header). A
    # unary call that did not ask for its job id early starts with this already settled
    # (`hold_job_header`): nothing is written when the job is accepted.
    job_header: asyncio.Future[None] | None = None
    header_held: bool = False

    async def settle_header(self) -> None:
        if self.job_header is not None:
            await asyncio.gather(self.job_header, return_exceptions=True)

    def hold_job_header(self) -> None:
        """Keeps the job-id header back until the result (see EARLY_JOB_ID_HEADER)."""
        settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        settled.set_result(None)
        self.job_header = settled
        self.header_held = True

    async def send_held_header(self, context: Any) -> None:
        """Sends the held job-id header right before the result: clients that read a unary
        call's job id from its response headers once it ends still find it there."""
        if self.header_held and self.job_id:
            self.header_held = False
            await context.send_initial_metadata(((JOB_ID_HEADER, self.job_id),))

    def trailers(self) -> tuple[tuple[str, str], ...]:
        """Trailing metadata every call ends with: its request id and, once it ran a job, the
        job id (always in the trailers, whichever way the headers went)."""
        found = [(REQUEST_ID_HEADER, self.request_id)]
        if self.job_id:
            found.append((JOB_ID_HEADER, self.job_id))
        return tuple(found)


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
