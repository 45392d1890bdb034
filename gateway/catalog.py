"""What the edge fronts: one entry per capability, with the facts the config and the launcher
need. Method shapes (unary or server-streaming) come from the generated descriptors, so a new
RPC in a .proto gets the right route without touching this file."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cached_property

from google.protobuf.descriptor import ServiceDescriptor


@dataclass(frozen=True)
class CapabilitySpec:
    name: str  # "t2i": also the Envoy cluster name
    service: str  # full proto service name; also its grpc.health.v1 service name
    pb2_module: str  # generated module that defines the service
    default_port: int  # the service's own default gRPC port
    default_metrics_port: int

    @property
    def module(self) -> str:
        """The `python -m` module that serves this capability."""
        return f"services.{self.name}"

    @cached_property
    def descriptor(self) -> ServiceDescriptor:
        pb2 = importlib.import_module(self.pb2_module)
        return pb2.DESCRIPTOR.services_by_name[self.service.rsplit(".", 1)[1]]

    @property
    def path_prefix(self) -> str:
        return f"/{self.service}/"

    @property
    def streaming_methods(self) -> tuple[str, ...]:
        """Server-streaming methods: they get their own routes (no timeout, no retries)."""
        return tuple(m.name for m in self.descriptor.methods if m.server_streaming)

    @property
    def unary_methods(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.descriptor.methods if not m.server_streaming)


CAPABILITIES: dict[str, CapabilitySpec] = {
    spec.name: spec
    for spec in (
        CapabilitySpec(
            "t2i",
            "mmserve.t2i.v1.ImageGenerationService",
            "mmserve.t2i.v1.t2i_pb2",
            50051,
            9091,
        ),
        CapabilitySpec(
            "vl", "mmserve.vl.v1.VisionLanguageService", "mmserve.vl.v1.vl_pb2", 50052, 9092
        ),
        CapabilitySpec(
            "vision",
            "mmserve.vision.v1.VisionService",
            "mmserve.vision.v1.vision_pb2",
            50053,
            9093,
        ),
        CapabilitySpec(
            "omni", "mmserve.omni.v1.OmniService", "mmserve.omni.v1.omni_pb2", 50054, 9094
        ),
    )
}

# The edge service answers these for every capability (see gateway/edge.py).
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_PREFIX = "/grpc.reflection."


def capability(name: str) -> CapabilitySpec:
    try:
        return CAPABILITIES[name]
    except KeyError:
        known = ", ".join(CAPABILITIES)
        raise ValueError(f"unknown capability {name!r} (known: {known})") from None
