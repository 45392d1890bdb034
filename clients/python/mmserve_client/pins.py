"""Replica pinning behind the Envoy edge. With several replicas of a capability, a job or a live
session exists on one of them only; the edge names that replica in the `mmserve-replica`
response header, and a request that sends it back is routed to the same replica. The clients
remember the header per job id and session id, and send it with GetJob, CancelJob and every
session call. Talking to a service directly, the header never appears and nothing is sent."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from .connection import JOB_ID_HEADER

REPLICA_HEADER = "mmserve-replica"


def header(metadata: Any, name: str) -> str:
    for key, value in metadata or ():
        if key == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


def job_id_of(metadata: Any) -> str:
    return header(metadata, JOB_ID_HEADER)


class Pins:
    """Job or session id -> replica header value; the oldest are forgotten past `limit`."""

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._pins: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, key: str, metadata: Any) -> None:
        replica = header(metadata, REPLICA_HEADER)
        if not key or not replica:
            return
        with self._lock:
            self._pins[key] = replica
            self._pins.move_to_end(key)
            while len(self._pins) > self._limit:
                self._pins.popitem(last=False)

    def pin(self, key: str, replica: str) -> None:
        """Pins by hand (e.g. a replica value printed by another process)."""
        if key and replica:
            with self._lock:
                self._pins[key] = replica

    def get(self, key: str | None) -> str:
        if not key:
            return ""
        with self._lock:
            return self._pins.get(key, "")

    def metadata(self, key: str | None) -> tuple[tuple[str, str], ...]:
        replica = self.get(key)
        return ((REPLICA_HEADER, replica),) if replica else ()
