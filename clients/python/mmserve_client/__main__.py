"""`python -m mmserve_client` runs the `mmserve` command."""

import sys

from .cli import main

sys.exit(main())
