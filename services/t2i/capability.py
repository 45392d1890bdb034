"""The t2i capability as the runtime serves it: settings, engine and servicer."""

from __future__ import annotations

from services.runtime.config import ServiceSettings
from services.runtime.server import Capability
from services.t2i.config import T2ISettings
from services.t2i.engine import T2IEngine
from services.t2i.servicer import SERVICE_NAME, add_servicers


def create_engine(settings: ServiceSettings) -> T2IEngine:
    if not isinstance(settings, T2ISettings):
        raise TypeError("the t2i engine needs T2ISettings")
    return T2IEngine(settings)


CAPABILITY = Capability(
    name="t2i",
    service_names=(SERVICE_NAME,),
    settings_cls=T2ISettings,
    create_engine=create_engine,
    add_servicers=add_servicers,
)
