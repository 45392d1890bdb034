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
