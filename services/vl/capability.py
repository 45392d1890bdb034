"""The vl capability as the runtime serves it: settings, engine and servicer."""

from __future__ import annotations

import grpc

from services.runtime.app import ServiceRuntime
from services.runtime.config import ServiceSettings
from services.runtime.engine import Engine
from services.runtime.server import Capability
from services.vl.config import VLSettings

SERVICE_NAME = "mmserve.vl.v1.VisionLanguageService"


def create_engine(settings: ServiceSettings) -> Engine:
    # Imported here so process-wide settings (threads, OpenMP) apply before torch loads, and
    # `--help` and config errors do not pay for torch and transformers.
    from services.vl.engine import VLEngine

    assert isinstance(settings, VLSettings)
    return VLEngine(settings)


def add_servicers(server: grpc.aio.Server, runtime: ServiceRuntime) -> None:
    from mmserve.vl.v1 import vl_pb2_grpc
    from services.vl.servicer import VisionLanguageServicer

    vl_pb2_grpc.add_VisionLanguageServiceServicer_to_server(VisionLanguageServicer(runtime), server)


CAPABILITY = Capability(
    name="vl",
    service_names=(SERVICE_NAME,),
    settings_cls=VLSettings,
    create_engine=create_engine,
    add_servicers=add_servicers,
)
