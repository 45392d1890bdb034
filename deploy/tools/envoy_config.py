"""The Envoy config the containers run: gateway/envoy.yaml.j2 rendered for Compose and
Kubernetes, committed at deploy/k8s/base/edge/envoy.yaml (the ConfigMap's and the Envoy
image's source).

Upstreams are the capabilities' DNS names on their default ports (t2i:50051, ...): the Compose
service names and the Kubernetes headless Service names alike, so one file serves both. The edge
service listens beside Envoy on the pod's (or the Compose network namespace's) loopback.

    python -m deploy.tools.envoy_config           # rewrite the committed file
    python -m deploy.tools.envoy_config --check   # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.catalog import CAPABILITIES

REPO = Path(__file__).resolve().parents[2]
RENDERED = REPO / "deploy" / "k8s" / "base" / "edge" / "envoy.yaml"
# Where deploy/docker/Dockerfile.envoy puts the descriptor set for the JSON transcoder.
DESCRIPTORS_IN_IMAGE = "/etc/mmserve/mmserve.binpb"
EDGE_SERVICE = "127.0.0.1:50050"
LISTEN_PORT = 8080


def upstreams() -> dict[str, str]:
    """Capability -> host:port that Envoy resolves (STRICT_DNS: every pod is a replica)."""
    return {name: f"{name}:{spec.default_port}" for name, spec in CAPABILITIES.items()}


def render_args() -> list[str]:
    args: list[str] = []
    for name, address in upstreams().items():
        args += ["--upstream", f"{name}={address}"]
    return [
        *args,
        "--edge-service",
        EDGE_SERVICE,
        "--listen-host",
        "0.0.0.0",
        "--listen-port",
        str(LISTEN_PORT),
        "--descriptors",
        DESCRIPTORS_IN_IMAGE,
        "--no-build-descriptors",
    ]


def render() -> str:
    """The config as gateway/render.py makes it now (its command line is its interface)."""
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.render", *render_args()],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"gateway.render failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="Only compare; exit 1 if stale.")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = RENDERED.read_text(encoding="utf-8") if RENDERED.exists() else ""
        if current != text:
            print(f"{RENDERED} is stale: run python -m deploy.tools.envoy_config", file=sys.stderr)
            return 1
        return 0
    RENDERED.write_text(text, encoding="utf-8")
    print(RENDERED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
