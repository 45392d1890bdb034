"""`python -m services.t2i`: serve text-to-image and image-to-image over gRPC."""

from __future__ import annotations

import sys

from services.runtime.server import main
from services.t2i.capability import CAPABILITY

if __name__ == "__main__":
    sys.exit(main(CAPABILITY))
