"""`python -m services.omni`: serve mmserve.omni.v1.OmniService."""

from __future__ import annotations

import sys

from services.omni.capability import CAPABILITY
from services.runtime.server import main

if __name__ == "__main__":
    sys.exit(main(CAPABILITY))
