"""The one mapping from exceptions to canonical gRPC statuses with google.rpc details."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.runtime import errors

log = logging.getLogger("mmserve.errors")

ERROR_DOMAIN = "mmserve.dev"
# The executor's reasons for the jobs it cancels when the process stops (the drain grace ran
# out, or the executor closed): the caller did nothing wrong and another replica can serve the
# same request, so these end UNAVAILABLE (what gRPC clients and retry policies retry), never
# CANCELLED (which reads as the caller's own cancel and is never retried).
SHUTDOWN_REASONS = ("server shutting down", "executor closed")
# How a replica names itself in that error: behind the edge it is one of several.
REPLICA_NAME = f"{socket.gethostname()} (pid {os.getpid()})"


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _retry_info(seconds: float) -> any_pb2.Any:
    whole = math.floor(seconds)
    delay = duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))
    return _pack(error_details_pb2.RetryInfo(retry_delay=delay))


def lost_to_shutdown(exc: BaseException) -> bool:
    """A job this replica cancelled because it is stopping, not because the caller asked."""
    return isinstance(exc, errors.JobCancelled) and exc.message in SHUTDOWN_REASONS


def _replica_stopped(request_info: any_pb2.Any) -> status_pb2.Status:
    return status_pb2.Status(
        code=code_pb2.UNAVAILABLE,
        message=f"replica {REPLICA_NAME} stopped before the job finished (its drain grace "
        "ran out); the request did not complete: retry it, on another replica",
        details=[
            request_info,
            _retry_info(0.0),
            _pack(error_details_pb2.ErrorInfo(reason="ReplicaStopped", domain=ERROR_DOMAIN)),
        ],
    )


def rich_status(exc: BaseException, request_id: str) -> status_pb2.Status:
    """google.rpc.Status for an exception. Unknown exceptions become INTERNAL with the request id
    and no stack trace (the trace goes to the server log)."""
    request_info = _pack(error_details_pb2.RequestInfo(request_id=request_id))
    if lost_to_shutdown(exc):
        return _replica_stopped(request_info)
    if isinstance(exc, errors.ServingError):
        code = getattr(code_pb2, exc.code_name)
        details = [request_info]
        if isinstance(exc, errors.InvalidArgument) and exc.violations:
            details.append(
                _pack(
                    error_details_pb2.BadRequest(
                        field_violations=[
                            error_details_pb2.BadRequest.FieldViolation(
                                field=v.field, description=v.description
                            )
                            for v in exc.violations
                        ]
                    )
                )
            )
        retry_after = getattr(exc, "retry_after_seconds", None)
        if retry_after is not None:
            details.append(_retry_info(retry_after))
        details.append(
            _pack(error_details_pb2.ErrorInfo(reason=type(exc).__name__, domain=ERROR_DOMAIN))
        )
        return status_pb2.Status(code=code, message=exc.message, details=details)
    if isinstance(exc, asyncio.CancelledError):
        return status_pb2.Status(
            code=code_pb2.CANCELLED, message="cancelled", details=[request_info]
        )
    return status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error (request id {request_id})",
        details=[request_info],
    )


def to_grpc_status(exc: BaseException, request_id: str) -> grpc.Status:
    return rpc_status.to_status(rich_status(exc, request_id))


def code_of(exc: BaseException) -> grpc.StatusCode:
    """The gRPC code an exception maps to (for logs and metrics)."""
    number = rich_status(exc, "").code
    return next(c for c in grpc.StatusCode if c.value[0] == number)
