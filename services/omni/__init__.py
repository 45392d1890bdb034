"""The omni capability: text, image and audio in; streamed text and speech out; live sessions;
reference voices. `python -m services.omni --help` lists every setting."""

from __future__ import annotations

import grpc

from services.omni.config import OmniSettings
from services.runtime.app import ServiceRuntime
from services.runtime.config import ServiceSettings
from services.runtime.engine import Engine
from services.runtime.server import Capability

SERVICE_NAME = "mmserve.omni.v1.OmniService"


def _create_engine(settings: ServiceSettings) -> Engine:
    # Imported here so `--help` and config errors do not pay for torch and transformers.
    from services.omni.engine import OmniEngine

    assert isinstance(settings, OmniSettings)
    return OmniEngine(settings)


def _add_servicers(server: grpc.aio.Server, runtime: ServiceRuntime) -> None:
    from services.omni.servicer import add_servicers

    add_servicers(server, runtime)


CAPABILITY = Capability(
    name="omni",
    service_names=(SERVICE_NAME,),
    settings_cls=OmniSettings,
    create_engine=_create_engine,
    add_servicers=_add_servicers,
)
