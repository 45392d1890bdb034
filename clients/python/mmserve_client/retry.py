"""When to retry a failed call: RESOURCE_EXHAUSTED (queue full, rate limit) after the delay the
server asked for in RetryInfo, a bounded number of times and never past the call's deadline.
The decision is a pure function, so the sync and asyncio clients share it."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from .errors import MMServeError


@dataclass(frozen=True)
class RetryPolicy:
    """`max_attempts` counts the first try; 1 means no retries."""

    max_attempts: int = 3
    # Codes worth retrying. Callers willing to wait out a model load, a draining replica or a
    # lost one (the SDK reports a replica lost mid-call as UNAVAILABLE) can add UNAVAILABLE:
    # inference calls change no state, so repeating one is safe. Session and voice calls do:
    # one lost mid-call may have done its work already (a retried RegisterVoice can register
    # the voice twice), which the edge never retries for them (docs/clients.md).
    codes: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED})
    default_delay: float = 1.0  # when the server sent no RetryInfo
    max_delay: float = 30.0  # never wait longer than this for one retry
    backoff: float = 2.0  # multiplies default_delay per attempt when there is no RetryInfo

    @classmethod
    def none(cls) -> RetryPolicy:
        return cls(max_attempts=1)

    def delay(self, error: MMServeError, attempt: int, remaining: float | None) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to give up and raise.

        Out-of-memory errors carry no RetryInfo and are not retried: the same request would run
        out of memory again."""
        if attempt >= self.max_attempts or error.code not in self.codes:
            return None
        if error.code is grpc.StatusCode.RESOURCE_EXHAUSTED and error.retry_delay is None:
            return None
        wait = error.retry_delay
        if wait is None:
            wait = self.default_delay * self.backoff ** (attempt - 1)
        wait = min(max(wait, 0.0), self.max_delay)
        if remaining is not None and wait >= remaining:
            return None  # the deadline would pass while waiting
        return wait
