"""Every offline check of deploy/ in one command (what tests/deploy runs, for CI or by hand):

python -m deploy.tools
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from deploy.tools import compose, dockerfiles, envoy_config, manifests


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m deploy.tools",
        description="Run every offline check of deploy/: the Envoy config, the Kubernetes "
        "manifests, the Compose file and the Dockerfiles.",
    ).parse_args(argv)
    failures = 0
    for name, check in (
        ("envoy config", lambda: envoy_config.main(["--check"])),
        ("kubernetes manifests", lambda: manifests.main([])),
        ("compose file", lambda: compose.main([])),
        ("dockerfiles", lambda: dockerfiles.main([])),
    ):
        print(f"== {name}", flush=True)
        code = check()
        failures += code != 0
    print("deploy checks:", "OK" if failures == 0 else f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
