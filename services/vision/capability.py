"""The vision capability as the runtime serves it: settings, engine and operation table."""

from __future__ import annotations

from services.runtime.app import ServiceRuntime
from services.runtime.config import ServiceSettings
from services.runtime.engine import Engine
from services.runtime.operations import OperationTable
from services.runtime.server import Capability
from services.vision.config import VisionSettings

SERVICE = "mmserve.vision.v1.VisionService"


def _create_engine(settings: ServiceSettings) -> Engine:
    # Imported here so process-wide settings (threads, OpenMP) apply before torch loads, and
    # `--help` and config errors do not pay for torch and transformers.
    from services.vision.engine import VisionEngine

    if not isinstance(settings, VisionSettings):
        raise TypeError(f"vision needs VisionSettings, got {type(settings).__name__}")
    return VisionEngine(settings)


def _operations(runtime: ServiceRuntime) -> OperationTable:
    from services.vision.operations import operations

    return operations(runtime)


CAPABILITY = Capability(
    name="vision",
    service_names=(SERVICE,),
    settings_cls=VisionSettings,
    create_engine=_create_engine,
    operations=_operations,
)
