"""The vl capability as the runtime serves it: settings, engine class and operation table."""

from __future__ import annotations

from services.runtime.server import Capability
from services.vl.config import VLSettings

SERVICE_NAME = "mmserve.vl.v1.VisionLanguageService"

# The engine and the operations are named, not imported: the runtime imports them at start.
CAPABILITY = Capability(
    "vl",
    (SERVICE_NAME,),
    VLSettings,
    "services.vl.engine:VLEngine",
    "services.vl.operations:operations",
)
