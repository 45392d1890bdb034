"""Smoke test of the container images, wherever podman is installed (`make install-containers`;
skipped otherwise): builds the vision, edge and Envoy images with `deploy/podman/images.sh`
(layer-cached: seconds when nothing changed, about 15 minutes from nothing on 2 busy cores),
runs vision with its built-in model and the edge (Envoy + edge service) on a private network,
and calls through Envoy's published port: reflection, health, one real embedding call.
MMSERVE_CONTAINER_SMOKE=0 skips it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.deploy.containers.podman import PREFIX, REPO, TAG, free_port, logs, podman, wait_healthy
from tests.e2e.samples import SAMPLES
from tests.e2e.support import grpcurl

pytestmark = [
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed"),
    pytest.mark.skipif(
        os.environ.get("MMSERVE_CONTAINER_SMOKE") == "0", reason="MMSERVE_CONTAINER_SMOKE=0"
    ),
]
VISION = SAMPLES["vision"]


def _build() -> None:
    for script, env in (
        ("deploy/podman/base-image.sh", {}),
        ("deploy/podman/images.sh", {"MMSERVE_IMAGES": "vision edge envoy"}),
    ):
        proc = subprocess.run(
            ["nice", "bash", script],
            capture_output=True,
            text=True,
            timeout=2400,
            check=False,
            cwd=REPO,
            env={**os.environ, **env},
        )
        assert proc.returncode == 0, f"{script}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def edge() -> Iterator[str]:
    _build()
    suffix = uuid.uuid4().hex[:8]
    network, vision, envoy, edge = (
        f"mmserve-smoke-{n}-{suffix}" for n in ("net", "vision", "envoy", "edge")
    )
    port = free_port()
    hardening = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL"]
    try:
        podman("network", "create", network)
        podman(
            "run",
            "-d",
            "--name",
            vision,
            "--network",
            network,
            "--network-alias",
            "vision",
            *hardening,
            "-v",
            "/cache",
            "-e",
            "MMSERVE_DEVICE=cpu",
            "-e",
            "MMSERVE_MODEL=",
            f"{PREFIX}/vision:{TAG}-cpu",
        )
        podman(
            "run",
            "-d",
            "--name",
            envoy,
            "--network",
            network,
            "-p",
            f"127.0.0.1:{port}:8080",
            *hardening,
            f"{PREFIX}/envoy:{TAG}",
        )
        podman(
            "run",
            "-d",
            "--name",
            edge,
            "--network",
            f"container:{envoy}",
            *hardening,
            f"{PREFIX}/edge:{TAG}-cpu",
        )
        wait_healthy([vision], 600)
        wait_healthy([edge], 180)
        address = f"127.0.0.1:{port}"
        _wait_serving(address, VISION.spec.service, 120, vision)
        yield address
    finally:
        for name in (edge, envoy, vision):
            podman("rm", "-f", "-v", "-t", "5", name, check=False, timeout=120)
        podman("network", "rm", "-f", network, check=False)


def _health(address: str, service: str) -> str:
    proc = grpcurl(
        [
            "-plaintext",
            "-d",
            json.dumps({"service": service}),
            address,
            "grpc.health.v1.Health/Check",
        ]
    )
    return str(json.loads(proc.stdout)["status"]) if proc.returncode == 0 else proc.stderr


def _wait_serving(address: str, service: str, timeout: float, container: str) -> None:
    """Envoy's active health check admits the upstream within a few seconds of SERVING."""
    deadline = time.monotonic() + timeout
    seen = _health(address, service)
    while seen != "SERVING" and time.monotonic() < deadline:
        time.sleep(1)
        seen = _health(address, service)
    assert seen == "SERVING", f"{service}: {seen}\n{logs(container)}"


@pytest.mark.timeout(3000)
def test_edge_container_lists_and_serves_vision(edge: str) -> None:
    listed = grpcurl(["-plaintext", edge, "list"])
    assert listed.returncode == 0, listed.stderr
    assert VISION.spec.service in listed.stdout.split()
    assert _health(edge, "mmserve.edge") == "SERVING"
    call = grpcurl(
        [
            "-plaintext",
            "-d",
            json.dumps(VISION.request),
            edge,
            f"{VISION.spec.service}/{VISION.unary}",
        ],
        timeout=120,
    )
    assert call.returncode == 0, call.stderr
    assert json.loads(call.stdout)["embeddings"]
