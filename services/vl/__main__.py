"""`python -m services.vl`: serve mmserve.vl.v1.VisionLanguageService (see --help)."""

from __future__ import annotations

import sys

from services.runtime.server import main
from services.vl.capability import CAPABILITY

if __name__ == "__main__":
    sys.exit(main(CAPABILITY))
