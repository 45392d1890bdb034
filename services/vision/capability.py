"""The vision capability as the runtime serves it: settings, engine and servicer."""

from __future__ import annotations

import grpc

from services.runtime.app import ServiceRuntime
from services.runtime.config import ServiceSettings
from services.runtime.engine import Engine
from services.runtime.server import Capability
from services.vision.config import VisionSettings

SERVICE = "mmserve.vision.v1.VisionService"


def _create_engine(settings: ServiceSettings) -> Engine:
    # Imported here so process-wide settings (threads, OpenMP) apply before torch loads, and
    # `--help` and config errors do not pay for torch and transformers.
    from services.vision.engine import VisionEngine

    assert isinstance(settings, VisionSettings)
    return VisionEngine(settings)


def _add_servicers(server: grpc.aio.Server, runtime: ServiceRuntime) -> None:
    from mmserve.vision.v1 import vision_pb2_grpc
    from services.vision.servicer import VisionServicer

    vision_pb2_grpc.add_VisionServiceServicer_to_server(VisionServicer(runtime), server)


CAPABILITY = Capability(
    name="vision",
    service_names=(SERVICE,),
    settings_cls=VisionSettings,
    create_engine=_create_engine,
    add_servicers=_add_servicers,
)
