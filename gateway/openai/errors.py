"""Errors in OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with the HTTP
status of each gRPC code and the google.rpc details the services send (BadRequest field
violations name `param`; RetryInfo becomes Retry-After)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import grpc
from google.rpc import error_details_pb2, status_pb2
from starlette.responses import JSONResponse

# gRPC code -> (HTTP status, OpenAI error type, OpenAI error code)
_MAPPING: dict[grpc.StatusCode, tuple[int, str, str | None]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", None),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error", None),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error", "unsupported"),
    grpc.StatusCode.UNIMPLEMENTED: (400, "invalid_request_error", "unsupported"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error", "invalid_api_key"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error", "permission_denied"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error", "not_found"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "rate_limit_exceeded"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable", "model_not_ready"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout", "deadline_exceeded"),
    grpc.StatusCode.CANCELLED: (499, "cancelled", "cancelled"),
    grpc.StatusCode.ABORTED: (409, "conflict", None),
}
_SERVER_ERROR = (500, "server_error", None)
_LEADING_FIELD = re.compile(r"^([a-z_]+(?:\[\d+\])*(?:\.[a-z_]+(?:\[\d+\])*)*): ")


class OpenAIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"retry-after": str(max(1, math.ceil(self.retry_after)))}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers())


def invalid(message: str, param: str | None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def unknown_model(model: str, endpoint: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model '{model}' does not exist or is not served for {endpoint} "
        "(GET /v1/models lists the served models).",
        param="model",
        code="model_not_found",
    )


def _details(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status()
            status.ParseFromString(value)
            return status
    return None


ParamMapper = Callable[[str], str | None]


def path_rewriter(rules: Sequence[tuple[re.Pattern[str], str]]) -> Callable[[str], str]:
    """A ParamMapper from (pattern, replacement) rules applied in order: the OpenAI parameter
    behind a contract field path that a service named."""

    def param_of(field: str) -> str:
        for pattern, replacement in rules:
            field = pattern.sub(replacement, field)
        return field

    return param_of


def from_grpc(error: grpc.aio.AioRpcError, param_of: ParamMapper | None = None) -> OpenAIError:
    """The OpenAI error for a failed gRPC call; `param_of` turns a request field path of the
    gRPC contract (BadRequest field violation) into the OpenAI parameter it came from."""
    status, kind, code = _MAPPING.get(error.code(), _SERVER_ERROR)
    message = error.details() or error.code().name.lower()
    param: str | None = None
    retry_after: float | None = None
    rich = _details(error)
    if rich is not None:
        for detail in rich.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                if bad.field_violations:
                    field = bad.field_violations[0].field
                    param = param_of(field) if param_of is not None else field
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                retry_after = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    if param is None and status == 400:
        # Some refusals (FAILED_PRECONDITION) carry no field violation but start with the
        # field they are about, "messages[0].content[1]: this model does not take images".
        found = _LEADING_FIELD.match(message)
        if found:
            field = found.group(1)
            param = param_of(field) if param_of is not None else field
    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after is None:
        # Without RetryInfo it is a size limit (a message over the services' maximum), which
        # waiting would not cure.
        return OpenAIError(413, message, type="invalid_request_error", code="request_too_large")
    if error.code() == grpc.StatusCode.UNAVAILABLE and retry_after is None:
        retry_after = 1.0
    return OpenAIError(status, message, type=kind, param=param, code=code, retry_after=retry_after)
