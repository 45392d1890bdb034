"""The t2i capability as the runtime serves it: settings, engine class and operation table."""

from __future__ import annotations

from services.runtime.server import Capability
from services.t2i.config import T2ISettings

SERVICE_NAME = "mmserve.t2i.v1.ImageGenerationService"

# The engine and the operations are named, not imported: the runtime imports them at start.
CAPABILITY = Capability(
    "t2i",
    (SERVICE_NAME,),
    T2ISettings,
    "services.t2i.engine:T2IEngine",
    "services.t2i.operations:operations",
)
