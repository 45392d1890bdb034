"""The vision capability as the runtime serves it: settings, engine class and operation table."""

from __future__ import annotations

from services.runtime.server import Capability
from services.vision.config import VisionSettings

SERVICE = "mmserve.vision.v1.VisionService"

# The engine and the operations are named, not imported: the runtime imports them at start.
CAPABILITY = Capability(
    "vision",
    (SERVICE,),
    VisionSettings,
    "services.vision.engine:VisionEngine",
    "services.vision.operations:operations",
)
