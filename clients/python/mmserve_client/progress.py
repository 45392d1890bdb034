"""Plain-text progress for the CLI on stderr: queue position while waiting, a step bar with
counts and ETA while running. On a terminal it redraws one line; elsewhere (pipes, logs, CI)
it writes one line per change, so nothing depends on terminal control codes."""

from __future__ import annotations

import sys
import threading
from typing import TextIO

BAR_WIDTH = 24
# A job reported at queue position 1 may start at once or wait behind a running job; its
# position is shown only if nothing else has happened after this long.
QUEUE_GRACE_SECONDS = 0.3


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def bar(step: int, total: int, width: int = BAR_WIDTH) -> str:
    filled = 0 if total <= 0 else min(width, round(width * step / total))
    return "[" + "#" * filled + "." * (width - filled) + "]"


class ProgressReporter:
    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.interactive = enabled and self.stream.isatty()
        self._open_line = False
        self._last = ""
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _show(self, text: str, from_timer: bool = False) -> None:
        with self._lock:
            if not from_timer:
                self._cancel_timer()
            self._write(text)

    def _write(self, text: str) -> None:
        if not self.enabled or text == self._last:
            return
        self._last = text
        if self.interactive:
            self.stream.write("\r\x1b[2K" + text)
            self._open_line = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def accepted(self, position: int, queue_length: int, eta_seconds: float) -> None:
        """The job was accepted at this queue position: shown at once when it is behind
        others, else only if it has not started after a moment."""
        if position > 1:
            self.queued(position, queue_length, eta_seconds)
            return
        text = queue_text(position, queue_length, eta_seconds)
        with self._lock:
            self._cancel_timer()
            if self.enabled:
                self._timer = threading.Timer(
                    QUEUE_GRACE_SECONDS, self._show, args=(text,), kwargs={"from_timer": True}
                )
                self._timer.daemon = True
                self._timer.start()

    def queued(self, position: int, queue_length: int, eta_seconds: float) -> None:
        self._show(queue_text(position, queue_length, eta_seconds))

    def step(self, step: int, total: int, elapsed_seconds: float, eta_seconds: float) -> None:
        eta = f"  ETA {format_seconds(eta_seconds)}" if eta_seconds > 0 else ""
        counts = f"{step}/{total}" if total else str(step)
        self._show(f"{bar(step, total)} {counts} steps  {format_seconds(elapsed_seconds)}{eta}")

    def message(self, text: str) -> None:
        """A line that stays (the bar continues below it)."""
        if not self.enabled:
            return
        self.finish()
        with self._lock:
            self.stream.write(text + "\n")
            self.stream.flush()

    def finish(self) -> None:
        with self._lock:
            self._cancel_timer()
            if self._open_line:
                self.stream.write("\n")
                self.stream.flush()
                self._open_line = False
            self._last = ""


def queue_text(position: int, queue_length: int, eta_seconds: float) -> str:
    eta = f", starts in ~{format_seconds(eta_seconds)}" if eta_seconds > 0 else ""
    return f"queued: position {position} of {queue_length}{eta}"
