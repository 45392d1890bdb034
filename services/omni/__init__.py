"""The omni capability: text, image and audio in; streamed text and speech out; live sessions;
reference voices. `python -m services.omni --help` lists every setting."""

from __future__ import annotations

from services.omni.config import OmniSettings
from services.runtime.server import Capability

SERVICE_NAME = "mmserve.omni.v1.OmniService"

CAPABILITY = Capability(
    name="omni",
    service_names=(SERVICE_NAME,),
    settings_cls=OmniSettings,
    # Named, not imported: the runtime imports them at start, so `--help` stays light.
    create_engine="services.omni.engine:OmniEngine",
    operations="services.omni.operations:operations",
)
