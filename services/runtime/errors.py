"""Errors engines and the executor raise, free of gRPC.

Each class names the canonical gRPC code it maps to; `services.runtime.status` turns them into
statuses with google.rpc details. Engines raise these and never import grpc.
"""

from __future__ import annotations

from dataclasses import dataclass

# Error text travels in gRPC trailers (grpc-message, and grpc-status-details-bin base64-encoded),
# and clients drop a reply whose metadata passes a few KiB (gRPC's defaults: 8 KiB soft, 16 KiB
# hard): the caller then sees RESOURCE_EXHAUSTED "metadata size exceeds hard limit" instead of
# the real error. Messages and violations often quote the request (an unknown id, thousands of bad
# items), so the client-facing text is bounded here, once, whatever raised it.
MAX_MESSAGE_BYTES = 512
MAX_FIELD_BYTES = 128
MAX_DESCRIPTION_BYTES = 256
MAX_VIOLATIONS_BYTES = 2048  # all violations of one error together, fields and descriptions


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes (on a character boundary), marked with "..."."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return text
    return data[: max(0, limit - 3)].decode("utf-8", errors="ignore") + "..."


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field, as google.rpc.BadRequest.FieldViolation carries it."""

    field: str  # dotted path in the request message, e.g. "params.width" or "images[2]"
    description: str


def _bounded(violations: list[FieldViolation]) -> list[FieldViolation]:
    """The first violations (each clipped) that fit MAX_VIOLATIONS_BYTES; at least one."""
    kept: list[FieldViolation] = []
    used = 0
    for violation in violations:
        clipped = FieldViolation(
            clip(violation.field, MAX_FIELD_BYTES),
            clip(violation.description, MAX_DESCRIPTION_BYTES),
        )
        size = len(clipped.field.encode()) + len(clipped.description.encode())
        if kept and used + size > MAX_VIOLATIONS_BYTES:
            break
        kept.append(clipped)
        used += size
    return kept


class ServingError(Exception):
    """Base of every error a client should see with a specific gRPC code."""

    code_name = "UNKNOWN"

    def __init__(self, message: str) -> None:
        message = clip(message, MAX_MESSAGE_BYTES)
        super().__init__(message)
        self.message = message


class InvalidArgument(ServingError):
    """The request is malformed; `violations` names the fields."""

    code_name = "INVALID_ARGUMENT"

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message)
        self.violations = _bounded(list(violations or []))

    @classmethod
    def for_field(cls, field: str, description: str) -> InvalidArgument:
        return cls(f"{field}: {description}", [FieldViolation(field, description)])

    @classmethod
    def for_fields(cls, violations: list[FieldViolation]) -> InvalidArgument:
        """Every bad field of a request in one error, its message listing them all."""
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        return cls(f"invalid request: {summary}", violations)


class Violations:
    """Collects a request's field violations so that one reply names every bad field, not only
    the first one a client would otherwise fix, resend and trip over the next."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def __bool__(self) -> bool:
        return bool(self.items)

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def take(self, error: InvalidArgument) -> None:
        """Adds the violations of an InvalidArgument raised by a nested check."""
        self.items.extend(error.violations or [FieldViolation("", error.message)])

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument.for_fields(self.items)


class FailedPrecondition(ServingError):
    """The request is well formed but this model or state cannot serve it."""

    code_name = "FAILED_PRECONDITION"


class NotFound(ServingError):
    code_name = "NOT_FOUND"


class AlreadyExists(ServingError):
    """What the request would create is there already."""

    code_name = "ALREADY_EXISTS"


class Unimplemented(ServingError):
    """The loaded model family has no such operation."""

    code_name = "UNIMPLEMENTED"


class ResourceExhausted(ServingError):
    """Queue full or rate limited; the client should retry after `retry_after_seconds`."""

    code_name = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds = max(0.0, retry_after_seconds)


class QueueFull(ResourceExhausted):
    """The executor's bounded queue has no room."""


class Unavailable(ServingError):
    """The model is loading, failed to load, or the service is draining."""

    code_name = "UNAVAILABLE"

    def __init__(self, message: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class JobCancelled(ServingError):
    """The job was cancelled (client went away, CancelJob, or server drain)."""

    code_name = "CANCELLED"


class DeadlineExceeded(ServingError):
    """The job's deadline (covering queue and run) passed."""

    code_name = "DEADLINE_EXCEEDED"


class PermissionDenied(ServingError):
    code_name = "PERMISSION_DENIED"


class Unauthenticated(ServingError):
    code_name = "UNAUTHENTICATED"


class OutOfMemory(ServingError):
    """The device ran out of memory for this job (after any batch halving)."""

    code_name = "RESOURCE_EXHAUSTED"


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's CUDA/MPS OOM errors and plain MemoryError, without importing torch."""
    if isinstance(exc, MemoryError | OutOfMemory):
        return True
    name = type(exc).__name__
    if name in {"OutOfMemoryError", "OutOfMemory"}:
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
