"""JSON log lines: one object per line on stderr, for every process of the stack.

Event lines (the access log) are logged as `EventLine`s: the formatter merges their fields into
the line directly, and any other handler sees them as JSON text, so an event is encoded once.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any


class EventLine:
    """A structured log message; str() is its JSON, only computed when a handler asks."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        return json.dumps(self.fields, separators=(",", ":"))


def _json_object(text: str) -> dict[str, object] | None:
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {"level": record.levelname, "logger": record.name}
        if isinstance(record.msg, EventLine) and not record.args:
            entry.update(record.msg.fields)
        else:
            message = record.getMessage()
            # Lines logged as JSON text: merge them rather than nest a string.
            parsed = _json_object(message)
            if parsed is None:
                entry["message"] = message
            else:
                entry.update(parsed)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
