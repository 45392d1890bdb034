"""The omni capability as the runtime serves it: settings, engine class and operation table."""

from __future__ import annotations

from services.omni.config import OmniSettings
from services.runtime.server import Capability

SERVICE_NAME = "mmserve.omni.v1.OmniService"

# The engine and the operations are named, not imported: the runtime imports them at start, so
# `--help` stays light.
CAPABILITY = Capability(
    name="omni",
    service_names=(SERVICE_NAME,),
    settings_cls=OmniSettings,
    create_engine="services.omni.engine:OmniEngine",
    operations="services.omni.operations:operations",
)
