"""Server streams as iterators of typed events, blocking (`JobStream`) and asyncio
(`AsyncJobStream`). Closing one, leaving its `with` block, or an exception while reading (Ctrl-C
and task cancellation included) cancels the call, and with it the server's job. A stream that
failed before its first event (queue full, rate limit) is retried like a unary call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from typing import Any, Generic, TypeVar

import grpc

from .audio import AudioClip
from .connection import Deadline
from .errors import MMServeError, from_rpc_error
from .events import AudioChunk, TextDelta
from .pins import Pins
from .retry import RetryPolicy

E = TypeVar("E")
ParseEvent = Callable[[Any], E | None]  # stream message -> event, None for unknown kinds
OpenCall = Callable[[float | None], Any]  # remaining seconds -> a started call


class StreamState:
    """What a stream has shown so far: its job id, the text and speech of chat streams, and its
    last event (the result, once the stream has ended)."""

    def __init__(self) -> None:
        self.job_id = ""
        self.last: Any = None
        self._text: list[str] = []
        self._audio: list[AudioClip] = []

    def update(self, response: Any, event: Any) -> None:
        self.job_id = self.job_id or getattr(response, "job_id", "")
        self.last = event
        if isinstance(event, TextDelta):
            self._text.append(event.text)
        elif isinstance(event, AudioChunk):
            self._audio.append(event.audio)

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def audio(self) -> AudioClip | None:
        return AudioClip.concatenate(self._audio) if self._audio else None


class _StreamBase(Generic[E]):
    def __init__(
        self,
        open_call: OpenCall,
        parse: ParseEvent[E],
        deadline: Deadline,
        retry: RetryPolicy,
        pins: Pins,
        pin: str | None,
    ) -> None:
        self._state = StreamState()
        self._open = open_call
        self._parse = parse
        self._deadline = deadline
        self._retry = retry
        self._pins = pins
        self._pin = pin  # the session id of a session stream; job streams learn their job id
        self._call: Any = None

    @property
    def job_id(self) -> str:
        """Known once the first event (Accepted) has arrived."""
        return self._state.job_id

    @property
    def text(self) -> str:
        """All text deltas received so far, joined."""
        return self._state.text

    @property
    def audio(self) -> AudioClip | None:
        """All speech chunks received so far, joined; None when there were none."""
        return self._state.audio

    @property
    def last_event(self) -> E | None:
        return self._state.last  # type: ignore[no-any-return]

    def _received(self, response: Any, first: bool, metadata: Any) -> E | None:
        event = self._parse(response)
        self._state.update(response, event)
        if first:
            self._pins.remember(self.job_id or self._pin or "", metadata)
        return event

    def _retry_wait(self, error: MMServeError, received: bool, attempt: int) -> float | None:
        # Only a stream that never started may be retried: a refused one ran no job.
        if received:
            return None
        return self._retry.delay(error, attempt, self._deadline.remaining())

    def cancel(self) -> None:
        """Cancels the call (safe from another thread); reading then raises Cancelled."""
        if self._call is not None:
            self._call.cancel()

    def _final(self) -> E:
        if self._state.last is None:
            raise MMServeError("the stream ended without events")
        return self._state.last  # type: ignore[no-any-return]


class JobStream(_StreamBase[E], Iterator[E]):
    """A blocking server stream (see the module docstring)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._events = self._run()

    def _run(self) -> Generator[E, None, None]:
        attempt = 1
        while True:
            call = self._call = self._open(self._deadline.remaining())
            received = False
            try:
                for response in call:
                    metadata = call.initial_metadata() if not received else None
                    event = self._received(response, not received, metadata)
                    received = True
                    if event is not None:
                        yield event
                return
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error, self.job_id)
                wait = self._retry_wait(error, received, attempt)
                if wait is None:
                    raise error from rpc_error
            finally:
                call.cancel()  # no-op once the call has ended
            time.sleep(wait)
            attempt += 1

    def __iter__(self) -> JobStream[E]:
        return self

    def __next__(self) -> E:
        return next(self._events)

    def close(self) -> None:
        self._events.close()

    def __enter__(self) -> JobStream[E]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def result(self) -> E:
        """Reads the stream to its end and returns its last event (the result)."""
        for _ in self:
            pass
        return self._final()


class AsyncJobStream(_StreamBase[E], AsyncIterator[E]):
    """An asyncio server stream (see the module docstring)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._events = self._run()

    async def _run(self) -> AsyncGenerator[E, None]:
        attempt = 1
        while True:
            call = self._call = self._open(self._deadline.remaining())
            received = False
            try:
                async for response in call:
                    metadata = await call.initial_metadata() if not received else None
                    event = self._received(response, not received, metadata)
                    received = True
                    if event is not None:
                        yield event
                return
            except grpc.aio.AioRpcError as rpc_error:
                error = from_rpc_error(rpc_error, self.job_id)
                wait = self._retry_wait(error, received, attempt)
                if wait is None:
                    raise error from rpc_error
            finally:
                call.cancel()
            await asyncio.sleep(wait)
            attempt += 1

    def __aiter__(self) -> AsyncJobStream[E]:
        return self

    async def __anext__(self) -> E:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        await self._events.aclose()

    async def __aenter__(self) -> AsyncJobStream[E]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def result(self) -> E:
        async for _ in self:
            pass
        return self._final()
