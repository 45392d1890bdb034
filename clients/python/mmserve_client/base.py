"""What the sync and asyncio clients of every capability share before any call is made: the
connection, the generated stub and the service's identity."""

from __future__ import annotations

import os
from typing import Any, ClassVar

import grpc
from google.protobuf import message_factory

from mmserve.omni.v1 import omni_pb2, omni_pb2_grpc
from mmserve.t2i.v1 import t2i_pb2, t2i_pb2_grpc
from mmserve.vision.v1 import vision_pb2, vision_pb2_grpc
from mmserve.vl.v1 import vl_pb2, vl_pb2_grpc

from .connection import Connection
from .retry import RetryPolicy


class ServiceSpec:
    """One capability's gRPC service: full name (also its health service name), generated stub
    class, GetModelInfo request class and the default local address."""

    def __init__(self, module: Any, service: str, stub: Any, info_request: Any, port: int) -> None:
        self.descriptor = module.DESCRIPTOR.services_by_name[service]
        self.name: str = self.descriptor.full_name
        self.stub = stub
        self.info_request = info_request
        self.default_target = f"127.0.0.1:{port}"

    def headers_first(self, channel: grpc.Channel, rpc: str) -> grpc.UnaryStreamMultiCallable:
        """The unary RPC `rpc` called as a unary-stream call. Both look the same on the wire (one
        request; headers, one response, trailers), but grpc's blocking API hands out a unary
        call's headers only with its response, and a stream's as soon as they arrive: the sync
        clients use this to report the `mmserve-job-id` header while the job runs."""
        output = message_factory.GetMessageClass(self.descriptor.methods_by_name[rpc].output_type)
        return channel.unary_stream(
            f"/{self.name}/{rpc}",
            request_serializer=_serialize,
            response_deserializer=output.FromString,
        )


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()  # type: ignore[no-any-return]


T2I = ServiceSpec(
    t2i_pb2,
    "ImageGenerationService",
    t2i_pb2_grpc.ImageGenerationServiceStub,
    t2i_pb2.GetModelInfoRequest,
    50051,
)
VL = ServiceSpec(
    vl_pb2,
    "VisionLanguageService",
    vl_pb2_grpc.VisionLanguageServiceStub,
    vl_pb2.GetModelInfoRequest,
    50052,
)
VISION = ServiceSpec(
    vision_pb2,
    "VisionService",
    vision_pb2_grpc.VisionServiceStub,
    vision_pb2.GetModelInfoRequest,
    50053,
)
OMNI = ServiceSpec(
    omni_pb2,
    "OmniService",
    omni_pb2_grpc.OmniServiceStub,
    omni_pb2.GetModelInfoRequest,
    50054,
)
SERVICES = {"t2i": T2I, "vl": VL, "vision": VISION, "omni": OMNI}


class ClientCore:
    """Arguments every client takes:

    - target: "host:port" of the service or of the Envoy edge; "https://host" turns TLS on.
    - tls / root_certificates (PEM bytes or a file) / server_name: TLS settings.
    - api_key: sent as `authorization: Bearer <key>` on every call.
    - timeout: default deadline in seconds for every call (queue time included); None: none.
    - retry: a RetryPolicy, or a number of attempts, for RESOURCE_EXHAUSTED (queue full, rate
      limit) after the server's RetryInfo delay.
    - channel: an existing channel to share (then `close()` leaves it open).
    """

    SPEC: ClassVar[ServiceSpec]

    def __init__(
        self,
        target: str | None = None,
        *,
        tls: bool | None = None,
        root_certificates: bytes | str | os.PathLike[str] | None = None,
        server_name: str | None = None,
        api_key: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | int | None = None,
        channel: Any = None,
    ) -> None:
        self.connection = Connection.create(
            target or self.SPEC.default_target,
            tls=tls,
            root_certificates=root_certificates,
            server_name=server_name,
            api_key=api_key,
            timeout=timeout,
            retry=retry,
        )
        self._own_channel = channel is None
        self._channel = channel if channel is not None else self._new_channel()
        self._stub = self.SPEC.stub(self._channel)

    def _new_channel(self) -> Any:
        raise NotImplementedError

    @property
    def target(self) -> str:
        return self.connection.target

    @property
    def service_name(self) -> str:
        return self.SPEC.name
