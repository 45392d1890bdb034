"""Reading the google.rpc details of a failed call, for tests of every capability."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2


def retry_info(error: grpc.aio.AioRpcError) -> error_details_pb2.RetryInfo | None:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    return info
    return None


def field_violations(error: grpc.aio.AioRpcError) -> list[str]:
    """The BadRequest field paths a client receives, in order."""
    fields: list[str] = []
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    fields.extend(v.field for v in bad.field_violations)
    return fields
