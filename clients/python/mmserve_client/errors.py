"""Exceptions for failed calls: one class per gRPC status code, with the google.rpc details the
server sends (field violations, retry delay, request id, error reason) already decoded."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

DETAILS_KEY = "grpc-status-details-bin"
REQUEST_ID_KEY = "x-request-id"
JOB_ID_KEY = "mmserve-job-id"
REPLICA_KEY = "mmserve-replica"


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field: a dotted path such as "params.width" and why it was refused."""

    field: str
    description: str


class MMServeError(Exception):
    """A call failed with a gRPC status. Subclasses name the status code."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        field_violations: Iterable[FieldViolation] = (),
        retry_delay: float | None = None,
        request_id: str = "",
        reason: str = "",
        job_id: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:  # keeps the real code for the generic class (unknown codes)
            self.code = code
        self.field_violations = list(field_violations)
        self.retry_delay = retry_delay  # seconds, from google.rpc.RetryInfo
        self.request_id = request_id
        self.reason = reason  # google.rpc.ErrorInfo.reason, e.g. "QueueFull"
        self.job_id = job_id  # set when the server had accepted the job before it failed

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        for violation in self.field_violations:
            text += f"\n  {violation.field}: {violation.description}"
        if self.retry_delay is not None:
            text += f"\n  retry after {self.retry_delay:.2f}s"
        return text

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly description (the CLI's --json error output)."""
        return {
            "code": self.code.name,
            "message": self.message,
            "field_violations": [
                {"field": v.field, "description": v.description} for v in self.field_violations
            ],
            "retry_delay": self.retry_delay,
            "request_id": self.request_id,
            "reason": self.reason,
            "job_id": self.job_id,
        }


class Cancelled(MMServeError):
    code = grpc.StatusCode.CANCELLED


class InvalidArgument(MMServeError):
    """The request was malformed; `field_violations` names the fields."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(MMServeError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(MMServeError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(MMServeError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(MMServeError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(MMServeError):
    """Queue full, rate limited or out of device memory; `retry_delay` says when to retry."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(MMServeError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(MMServeError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(MMServeError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(MMServeError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(MMServeError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(MMServeError):
    """The model is loading, the server is draining or unreachable; often worth a retry."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(MMServeError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(MMServeError):
    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[MMServeError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def error_class(code: grpc.StatusCode) -> type[MMServeError]:
    return _BY_CODE.get(code, MMServeError)


def _details(trailing: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Decodes the google.rpc.Status trailer; a malformed one is ignored, never fatal."""
    found: dict[str, Any] = {
        "violations": [],
        "retry": None,
        "request_id": "",
        "reason": "",
        "job_id": "",
    }
    for key, value in trailing:
        if key == REQUEST_ID_KEY and isinstance(value, str):
            found["request_id"] = value
        if key == JOB_ID_KEY and isinstance(value, str):
            found["job_id"] = value
        if key != DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:
            continue
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                found["violations"] += [
                    FieldViolation(v.field, v.description) for v in bad.field_violations
                ]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                found["retry"] = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
            elif detail.Is(error_details_pb2.RequestInfo.DESCRIPTOR):
                info = error_details_pb2.RequestInfo()
                detail.Unpack(info)
                found["request_id"] = info.request_id or found["request_id"]
            elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                error_info = error_details_pb2.ErrorInfo()
                detail.Unpack(error_info)
                found["reason"] = error_info.reason
    return found


def from_rpc_error(error: grpc.RpcError, job_id: str = "") -> MMServeError:
    """The exception for a failed call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`)."""
    code: grpc.StatusCode = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = (error.details() if hasattr(error, "details") else "") or ""
    trailing = (error.trailing_metadata() if hasattr(error, "trailing_metadata") else None) or ()
    details = _details(trailing)
    if code is grpc.StatusCode.INTERNAL and not details["request_id"] and "RST_STREAM" in message:
        # A proxy (Envoy) reset the stream because the replica behind it died after the call's
        # headers went out: a transport failure, not a server error (which always carries a
        # request id), so it reads as UNAVAILABLE, like the same failure without a proxy.
        code = grpc.StatusCode.UNAVAILABLE
        replica = _replica(error)
        message = (
            f"lost {f'replica {replica}' if replica else 'its replica'}: the connection to it "
            f"broke after the response had started ({message}); the call did not complete, "
            "retry it"
        )
    cls = error_class(code)
    return cls(
        message or code.name.lower().replace("_", " "),
        code=code if cls is MMServeError else None,
        field_violations=details["violations"],
        retry_delay=details["retry"],
        request_id=details["request_id"],
        reason=details["reason"],
        job_id=job_id or details["job_id"],
    )


def _replica(error: grpc.RpcError) -> str:
    """The replica that served the call, from the edge's `mmserve-replica` response header
    (the base64 of its address), when the headers arrived."""
    try:
        headers = error.initial_metadata() if hasattr(error, "initial_metadata") else None
    except Exception:
        return ""
    for key, value in headers or ():
        if key == REPLICA_KEY and isinstance(value, str):
            try:
                return base64.b64decode(value, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return value
    return ""
