"""Running calls over the generated stubs, once for blocking code and once for asyncio: deadlines
(one per call, covering its retries), retry of RESOURCE_EXHAUSTED, errors mapped to
MMServeError, the job id from the `mmserve-job-id` header or trailer (asked for early, with the
`mmserve-job-id-early` request header, only by calls that report it while they run), replica
pins (see pins.py), and
cancellation (an interrupted call is cancelled, so the server cancels its job). What a call
sends and how its answer is read lives in `wire/`, shared by both."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from .connection import EARLY_JOB_ID_HEADER, Connection, Deadline
from .errors import MMServeError, from_rpc_error
from .pins import Pins, job_id_of
from .streams import AsyncJobStream, JobStream, ParseEvent

R = TypeVar("R")
E = TypeVar("E")
Parse = Callable[[Any, str], R]  # (response message, job id) -> result
OnJob = Callable[[str], None]
PinKey = Callable[[Any], str]  # result -> the id to pin its replica under (default: job id)


class _Caller:
    def __init__(self, connection: Connection, pins: Pins | None = None) -> None:
        self.connection = connection
        self.pins = pins or Pins()

    def _metadata(self, request_id: str | None, pin: str | None) -> tuple[tuple[str, str], ...]:
        return (*self.connection.metadata(request_id), *self.pins.metadata(pin))

    def _done(self, result: R, job_id: str, metadata: Any, pin_key: PinKey | None) -> R:
        self.pins.remember(pin_key(result) if pin_key else job_id, metadata)
        return result


# Sent by calls that report their job id while they run (`on_job`).
EARLY = ((EARLY_JOB_ID_HEADER, "1"),)


class SyncCaller(_Caller):
    def unary(
        self,
        method: Any,
        request: Any,
        parse: Parse[R],
        *,
        timeout: float | None = None,
        on_job: OnJob | None = None,
        request_id: str | None = None,
        headers_first: Any = None,
        pin: str | None = None,
        pin_key: PinKey | None = None,
    ) -> R:
        """One unary call, with retries. `on_job` gets the job id while the job runs; it needs
        `headers_first`, the same RPC as a unary-stream callable (ServiceSpec.headers_first).
        `pin` is a job or session id whose replica the call must reach."""
        deadline = self.connection.deadline(timeout)
        metadata = self._metadata(request_id, pin)
        attempt = 1
        while True:
            try:
                if on_job is not None and headers_first is not None:
                    return self._early(
                        headers_first, request, parse, deadline, metadata, on_job, pin_key
                    )
                return self._once(method, request, parse, deadline, metadata, pin_key)
            except MMServeError as error:
                wait = self.connection.retry.delay(error, attempt, deadline.remaining())
                if wait is None:
                    raise
            time.sleep(wait)
            attempt += 1

    def _once(
        self,
        method: Any,
        request: Any,
        parse: Parse[R],
        deadline: Deadline,
        metadata: Any,
        pin_key: PinKey | None,
    ) -> R:
        # .future() rather than a blocking call: waiting on it stays interruptible (Ctrl-C), and
        # an interrupted wait cancels the call, so the server cancels the job.
        future = method.future(request, timeout=deadline.remaining(), metadata=metadata)
        try:
            response = future.result()
            headers = future.initial_metadata()
            trailers = future.trailing_metadata()
        except grpc.RpcError as rpc_error:
            raise from_rpc_error(rpc_error, _sync_job_id(future)) from rpc_error
        except BaseException:
            future.cancel()
            raise
        job_id = job_id_of(headers) or job_id_of(trailers)
        return self._done(parse(response, job_id), job_id, headers, pin_key)

    def _early(
        self,
        method: Any,
        request: Any,
        parse: Parse[R],
        deadline: Deadline,
        metadata: Any,
        on_job: OnJob,
        pin_key: PinKey | None,
    ) -> R:
        call = method(request, timeout=deadline.remaining(), metadata=(*metadata, *EARLY))
        job_id = ""
        try:
            headers = call.initial_metadata()
            job_id = job_id_of(headers)
            if job_id:
                self.pins.remember(job_id, headers)  # so on_job may already cancel it
                on_job(job_id)
            responses = list(call)  # exactly one, then the status
        except grpc.RpcError as rpc_error:
            raise from_rpc_error(rpc_error, job_id or _sync_job_id(call)) from rpc_error
        except BaseException:
            call.cancel()
            raise
        if len(responses) != 1:
            raise MMServeError(f"expected one response, got {len(responses)}")
        return self._done(parse(responses[0], job_id), job_id, headers, pin_key)

    def stream(
        self,
        method: Any,
        request: Any,
        parse: ParseEvent[E],
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        pin: str | None = None,
    ) -> JobStream[E]:
        metadata = self._metadata(request_id, pin)
        return JobStream(
            lambda remaining: method(request, timeout=remaining, metadata=metadata),
            parse,
            self.connection.deadline(timeout),
            self.connection.retry,
            self.pins,
            pin,
        )


def _sync_job_id(call: Any) -> str:
    try:
        return job_id_of(call.initial_metadata()) or job_id_of(call.trailing_metadata())
    except Exception:
        return ""  # the job id is a courtesy on an error path


class AsyncCaller(_Caller):
    async def unary(
        self,
        method: Any,
        request: Any,
        parse: Parse[R],
        *,
        timeout: float | None = None,
        on_job: OnJob | None = None,
        request_id: str | None = None,
        headers_first: Any = None,
        pin: str | None = None,
        pin_key: PinKey | None = None,
    ) -> R:
        """As SyncCaller.unary (grpc.aio, too, hands out a unary call's headers only with its
        response)."""
        deadline = self.connection.deadline(timeout)
        metadata = self._metadata(request_id, pin)
        attempt = 1
        while True:
            try:
                if on_job is not None and headers_first is not None:
                    return await self._early(
                        headers_first, request, parse, deadline, metadata, on_job, pin_key
                    )
                return await self._once(method, request, parse, deadline, metadata, pin_key)
            except MMServeError as error:
                wait = self.connection.retry.delay(error, attempt, deadline.remaining())
                if wait is None:
                    raise
            await asyncio.sleep(wait)
            attempt += 1

    async def _once(
        self,
        method: Any,
        request: Any,
        parse: Parse[R],
        deadline: Deadline,
        metadata: Any,
        pin_key: PinKey | None,
    ) -> R:
        call = method(request, timeout=deadline.remaining(), metadata=metadata)
        try:
            response = await call
            headers = await call.initial_metadata()
            trailers = await call.trailing_metadata()
        except grpc.aio.AioRpcError as rpc_error:
            raise from_rpc_error(rpc_error, await _aio_job_id(call)) from rpc_error
        except BaseException:  # task cancelled: cancel the call so the server drops the job
            call.cancel()
            raise
        job_id = job_id_of(headers) or job_id_of(trailers)
        return self._done(parse(response, job_id), job_id, headers, pin_key)

    async def _early(
        self,
        method: Any,
        request: Any,
        parse: Parse[R],
        deadline: Deadline,
        metadata: Any,
        on_job: OnJob,
        pin_key: PinKey | None,
    ) -> R:
        call = method(request, timeout=deadline.remaining(), metadata=(*metadata, *EARLY))
        job_id = ""
        try:
            headers = await call.initial_metadata()
            job_id = job_id_of(headers)
            if job_id:
                self.pins.remember(job_id, headers)
                on_job(job_id)
            responses = [response async for response in call]
        except grpc.aio.AioRpcError as rpc_error:
            raise from_rpc_error(rpc_error, job_id or await _aio_job_id(call)) from rpc_error
        except BaseException:
            call.cancel()
            raise
        if len(responses) != 1:
            raise MMServeError(f"expected one response, got {len(responses)}")
        return self._done(parse(responses[0], job_id), job_id, headers, pin_key)

    def stream(
        self,
        method: Any,
        request: Any,
        parse: ParseEvent[E],
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        pin: str | None = None,
    ) -> AsyncJobStream[E]:
        metadata = self._metadata(request_id, pin)
        return AsyncJobStream(
            lambda remaining: method(request, timeout=remaining, metadata=metadata),
            parse,
            self.connection.deadline(timeout),
            self.connection.retry,
            self.pins,
            pin,
        )


async def _aio_job_id(call: Any) -> str:
    try:
        found = job_id_of(await call.initial_metadata())
        return found or job_id_of(await call.trailing_metadata())
    except Exception:
        return ""  # the job id is a courtesy on an error path
