"""The vl capability as the runtime serves it: settings, engine and servicer wired together."""

from __future__ import annotations

import grpc

from mmserve.vl.v1 import vl_pb2_grpc
from services.runtime.app import ServiceRuntime
from services.runtime.config import ServiceSettings
from services.runtime.server import Capability
from services.vl.config import VLSettings
from services.vl.engine import VLEngine
from services.vl.servicer import SERVICE_NAME, VisionLanguageServicer


def create_engine(settings: ServiceSettings) -> VLEngine:
    assert isinstance(settings, VLSettings)
    return VLEngine(settings)


def add_servicers(server: grpc.aio.Server, runtime: ServiceRuntime) -> None:
    vl_pb2_grpc.add_VisionLanguageServiceServicer_to_server(VisionLanguageServicer(runtime), server)


CAPABILITY = Capability(
    name="vl",
    service_names=(SERVICE_NAME,),
    settings_cls=VLSettings,
    create_engine=create_engine,
    add_servicers=add_servicers,
)
