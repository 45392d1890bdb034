"""The t2i capability as the runtime serves it: settings, engine and operation table."""

from __future__ import annotations

from services.runtime.app import ServiceRuntime
from services.runtime.config import ServiceSettings
from services.runtime.engine import Engine
from services.runtime.operations import OperationTable
from services.runtime.server import Capability
from services.t2i.config import T2ISettings

SERVICE_NAME = "mmserve.t2i.v1.ImageGenerationService"


def create_engine(settings: ServiceSettings) -> Engine:
    # Imported here so process-wide settings (threads, OpenMP) apply before torch loads, and
    # `--help` and config errors do not pay for torch and diffusers.
    from services.t2i.engine import T2IEngine

    if not isinstance(settings, T2ISettings):
        raise TypeError("the t2i engine needs T2ISettings")
    return T2IEngine(settings)


def operations(runtime: ServiceRuntime) -> OperationTable:
    from services.t2i.operations import operations as table

    return table(runtime)


CAPABILITY = Capability(
    name="t2i",
    service_names=(SERVICE_NAME,),
    settings_cls=T2ISettings,
    create_engine=create_engine,
    operations=operations,
)
