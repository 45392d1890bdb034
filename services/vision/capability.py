"""The vision capability as the runtime serves it: settings, engine and servicer."""

from __future__ import annotations

import grpc

from mmserve.vision.v1 import vision_pb2_grpc
from services.runtime.app import ServiceRuntime
from services.runtime.config import ServiceSettings
from services.runtime.engine import Engine
from services.runtime.server import Capability
from services.vision.config import VisionSettings
from services.vision.engine import VisionEngine
from services.vision.servicer import VisionServicer

SERVICE = "mmserve.vision.v1.VisionService"


def _create_engine(settings: ServiceSettings) -> Engine:
    assert isinstance(settings, VisionSettings)
    return VisionEngine(settings)


def _add_servicers(server: grpc.aio.Server, runtime: ServiceRuntime) -> None:
    vision_pb2_grpc.add_VisionServiceServicer_to_server(VisionServicer(runtime), server)


CAPABILITY = Capability(
    name="vision",
    service_names=(SERVICE,),
    settings_cls=VisionSettings,
    create_engine=_create_engine,
    add_servicers=_add_servicers,
)
