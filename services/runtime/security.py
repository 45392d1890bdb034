"""API keys and per-caller rate limits, free of gRPC so they test as plain logic."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from services.runtime import errors


@dataclass(frozen=True)
class ApiKey:
    key_id: str  # what logs and metrics show; the secret never leaves this module
    digest: bytes  # sha256 of the secret: comparing digests keeps the compare constant-time


def _parse_key(entry: str, index: int) -> ApiKey:
    key_id, sep, secret = entry.strip().partition(":")
    if not sep:  # a bare key gets a stable, non-secret id
        secret = key_id
        key_id = "key-" + hashlib.sha256(secret.encode()).hexdigest()[:8]
    if not secret:
        raise ValueError(f"api key #{index + 1} is empty")
    return ApiKey(key_id=key_id, digest=hashlib.sha256(secret.encode()).digest())


class KeyStore:
    """Keys from settings and/or a file; empty means auth is off."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self._keys = [_parse_key(e, i) for i, e in enumerate(entries) if e.strip()]

    @classmethod
    def from_sources(cls, entries: Iterable[str], path: Path | None) -> KeyStore:
        lines = list(entries)
        if path is not None:
            for line in path.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    lines.append(line)
        return cls(lines)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def authenticate(self, authorization: str | None) -> str:
        """Key id for an `authorization: Bearer <key>` header value.

        Every stored key is compared, whether or not an earlier one matched, so timing reveals
        nothing about which key or how much of it was right."""
        if not authorization:
            raise errors.Unauthenticated("missing 'authorization: Bearer <api key>' metadata")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise errors.Unauthenticated("authorization metadata must be 'Bearer <api key>'")
        digest = hashlib.sha256(token.strip().encode()).digest()
        found: str | None = None
        for key in self._keys:
            if hmac.compare_digest(key.digest, digest) and found is None:
                found = key.key_id
        if found is None:
            raise errors.Unauthenticated("invalid API key")
        return found


class RateLimiter:
    """A token bucket per caller: `rate` tokens per second up to `burst`."""

    def __init__(self, rate: float, burst: int, max_callers: int = 10_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max_callers = max_callers
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, caller: str, now: float | None = None) -> None:
        """Takes one token or raises ResourceExhausted with the wait until the next one."""
        if not self.enabled:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(caller, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[caller] = (tokens - 1.0, now)
                allowed = True
            else:
                self._buckets[caller] = (tokens, now)
                allowed = False
            while len(self._buckets) > self._max_callers:  # forget the least recent callers
                self._buckets.popitem(last=False)
        if not allowed:
            wait = (1.0 - tokens) / self.rate
            raise errors.ResourceExhausted(
                f"rate limit of {self.rate:g} requests/s exceeded for {caller}", wait
            )
