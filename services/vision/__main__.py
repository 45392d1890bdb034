"""`python -m services.vision`: serve mmserve.vision.v1.VisionService (`--help` lists settings)."""

from __future__ import annotations

import sys

from services.runtime.server import main
from services.vision.capability import CAPABILITY

if __name__ == "__main__":
    sys.exit(main(CAPABILITY))
