"""The kustomize output of deploy/k8s/overlays/local played by `podman kube play`: every
Deployment becomes a pod from the built images, each pod's probes pass (kube play turns the
liveness probe into the container's health check), and the edge pod answers reflection and
health for every capability over the pod network."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gateway.catalog import CAPABILITIES
from tests.deploy.containers.podman import CAPABILITY_IMAGES, REPO, podman, wait_healthy
from tests.e2e.support import grpcurl

NETWORK = "mmserve-kubetest"
OVERLAY = "deploy/k8s/overlays/local"
HEALTHY_WITHIN_S = 900


def container(deployment: str, name: str, replica: int = 0) -> str:
    """kube play names a Deployment's pods <name>-pod-<replica> and their containers
    <pod>-<container>."""
    return f"{deployment}-pod-{replica}-{name}"


def give_service_name(pod: str, name: str) -> None:
    """kube play ignores Services, so the Service's DNS name (which Envoy's upstreams use) does
    not exist: reattach the pod to the network with that name as an alias, as a cluster's
    headless Service would resolve it."""
    infra = podman("pod", "inspect", "--format", "{{.InfraContainerID}}", pod).stdout.strip()
    podman("network", "disconnect", NETWORK, infra)
    podman("network", "connect", "--alias", name, NETWORK, infra)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    rendered = subprocess.run(
        [sys.executable, "-m", "deploy.tools.kustomize", OVERLAY],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=REPO,
    ).stdout
    path = tmp_path_factory.mktemp("kube") / "mmserve-local.yaml"
    path.write_text(rendered, encoding="utf-8")
    podman("kube", "down", str(path), check=False, timeout=300)
    if podman("network", "exists", NETWORK, check=False).returncode:
        podman("network", "create", NETWORK)
    played = podman("kube", "play", "--network", NETWORK, str(path), timeout=600, check=False)
    try:
        assert played.returncode == 0, played.stdout + played.stderr
        for name in CAPABILITY_IMAGES:
            give_service_name(f"{name}-pod-0", name)
        yield path
    finally:
        podman("kube", "down", str(path), check=False, timeout=300)
        podman("network", "rm", "-f", NETWORK, check=False)
        # kube play makes a volume of each ConfigMap; kube down (4.3) leaves them behind.
        for document in yaml.safe_load_all(rendered):
            if document and document.get("kind") == "ConfigMap":
                podman("volume", "rm", "-f", document["metadata"]["name"], check=False)


@pytest.fixture(scope="module")
def edge_address(manifest: Path) -> str:
    envoy = container("edge", "envoy")
    fmt = "{{json .NetworkSettings.Networks}}"
    networks = json.loads(podman("inspect", "--format", fmt, envoy).stdout)
    return f"{networks[NETWORK]['IPAddress']}:8080"


def test_capability_pods_pass_their_probes(manifest: Path) -> None:
    wait_healthy([container(name, "server") for name in CAPABILITY_IMAGES], HEALTHY_WITHIN_S)


def test_edge_pod_passes_its_probes(manifest: Path) -> None:
    # The edge container's probe goes through Envoy's listener: it covers both containers.
    wait_healthy([container("edge", "edge"), container("edge", "edge", 1)], 300)


def test_pods_keep_the_security_context(manifest: Path) -> None:
    server = container("vision", "server")
    assert podman("exec", server, "id", "-u").stdout.strip() == "10001"
    fmt = "{{.HostConfig.ReadonlyRootfs}}"
    assert podman("inspect", "--format", fmt, server).stdout.strip() == "true"
    # The emptyDir volumes are the writable places.
    podman("exec", server, "touch", "/tmp/probe", "/cache/probe")


def test_edge_pod_serves_every_capability(manifest: Path, edge_address: str) -> None:
    wait_healthy([container(name, "server") for name in CAPABILITY_IMAGES], HEALTHY_WITHIN_S)
    listed = grpcurl(["-plaintext", edge_address, "list"])
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) >= {spec.service for spec in CAPABILITIES.values()}
    # Envoy admits each capability after its DNS refresh and active health check see it.
    for spec in CAPABILITIES.values():
        deadline = time.monotonic() + 120
        status = _health(edge_address, spec.service)
        while status != "SERVING" and time.monotonic() < deadline:
            time.sleep(1)
            status = _health(edge_address, spec.service)
        assert status == "SERVING", (spec.service, status)


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
