"""Reports from the device thread to the event loop, one wake-up per burst.

A decode step of 8 rows reports progress and a text delta for each row: 16 reports a step.
`loop.call_soon_threadsafe` per report writes to the loop's self-pipe each time, and each write
hands the GIL to the woken loop thread and waits to get it back: 7% of the device thread's time
in a profile of 8 tiny-model rows. The mailbox queues reports and schedules one drain while the
previous one has not run yet, and inside `held_reports()` it schedules none until the block
ends, so a step that reports for every row costs one wake-up. The loop runs the reports in the
order they were posted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("mmserve.executor")


_held = threading.local()  # .mailboxes: those that got reports inside held_reports()


@contextlib.contextmanager
def held_reports() -> Iterator[None]:
    """On the posting thread: reports posted inside reach the loop together at the end."""
    if getattr(_held, "mailboxes", None) is not None:  # nested: the outer block sends
        yield
        return
    _held.mailboxes = mailboxes = []
    try:
        yield
    finally:
        _held.mailboxes = None
        for mailbox in mailboxes:
            mailbox.wake()


class LoopMailbox:
    """Callbacks posted from any thread, run on `loop` in posting order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._drain_scheduled = False

    def post(self, callback: Callable[..., None], *args: Any) -> None:
        """Queues `callback(*args)`; dropped once the loop is closed (shutdown)."""
        with self._lock:
            self._pending.append((callback, args))
            if self._drain_scheduled:
                return
            held = getattr(_held, "mailboxes", None)
            if held is not None:
                if self not in held:
                    held.append(self)
                return
            self._drain_scheduled = True
        self._schedule()

    def wake(self) -> None:
        """Schedules a drain for what is pending, unless one is scheduled already."""
        with self._lock:
            if self._drain_scheduled or not self._pending:
                return
            self._drain_scheduled = True
        self._schedule()

    def _schedule(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, deque()
            self._drain_scheduled = False
        for callback, args in batch:
            try:
                callback(*args)
            except Exception:  # as the loop would for a lone handle: log it, run the rest
                log.exception("a device-thread report failed on the loop")
