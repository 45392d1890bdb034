"""The Compose file: valid against the Compose Specification schema before and after
interpolation, and consistent with the services (ports, health checks, GPUs, drain grace) and
with the Envoy config (upstream names)."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml

from deploy.tools import compose, dockerfiles, envoy_config
from tests.deploy.conftest import CAPS

Model = dict[str, Any]


def test_compose_file_validates_against_the_compose_spec(compose_model: Model) -> None:
    assert compose.validate(compose_model) == []
    assert compose.validate(compose.interpolate(compose_model, {})) == []
    custom = {"T2I_GPU": "3", "MMSERVE_TAG": "1.2.3", "VL_MODEL": "/models/my-vl"}
    interpolated = compose.interpolate(compose_model, custom)
    assert compose.validate(interpolated) == []
    t2i = interpolated["services"]["t2i"]
    assert t2i["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["3"]
    assert t2i["image"] == "mmserve/t2i:1.2.3-cuda"
    assert interpolated["services"]["vl"]["environment"]["MMSERVE_MODEL"] == "/models/my-vl"


def test_schema_rejects_mistakes(compose_model: Model) -> None:
    broken = copy.deepcopy(compose_model)
    broken["services"]["vision"]["helthcheck"] = broken["services"]["vision"].pop("healthcheck")
    broken["services"]["envoy"]["depends_on"]["t2i"]["condition"] = "service_ready"
    problems = compose.validate(broken)
    assert any("helthcheck" in p for p in problems)
    assert any("service_ready" in p for p in problems)


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${A:-x}", {}, "x"),
        ("${A:-x}", {"A": ""}, "x"),
        ("${A-x}", {"A": ""}, ""),
        ("${A}", {"A": "1"}, "1"),
        ("$A/$$B", {"A": "1"}, "1/$B"),
        ("${A:+set}", {"A": "1"}, "set"),
        ("${A:+set}", {}, ""),
    ],
)
def test_interpolation(text: str, env: dict[str, str], expected: str) -> None:
    assert compose.interpolate(text, env) == expected


def test_interpolation_required_variable() -> None:
    with pytest.raises(compose.InterpolationError, match="need it"):
        compose.interpolate("${A:?need it}", {})


def _image_target(image: str) -> str:
    # mmserve/<target>:<tag>-<variant>
    return image.rsplit("/", 1)[-1].split(":")[0]


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
@pytest.mark.parametrize("name", sorted(CAPS))
def test_capability_services_match_their_settings(
    compose_model: Model, name: str, variant: str
) -> None:
    facts = CAPS[name]
    key = name if variant == "gpu" else f"{name}-cpu"
    service = compose.interpolate(compose_model, {})["services"][key]
    env = service["environment"]
    assert service["profiles"] == [variant]
    assert env["MMSERVE_HOST"] == "0.0.0.0"
    assert int(env["MMSERVE_PORT"]) == facts.port
    assert int(env["MMSERVE_METRICS_PORT"]) == facts.metrics_port
    assert float(env["MMSERVE_DRAIN_GRACE_SECONDS"]) == facts.drain_grace_seconds
    assert service["ports"] == [f"127.0.0.1:{facts.metrics_port}:{facts.metrics_port}"]
    # The health check asks the image's MMSERVE_HEALTH_SERVICE, set per Dockerfile target.
    assert service["healthcheck"]["test"] == ["CMD", "python", "/app/deploy/healthcheck.py"]
    target = dockerfiles.parse(dockerfiles.DOCKERFILES[1]).stage(_image_target(service["image"]))
    assert target.env()["MMSERVE_HEALTH_SERVICE"] == facts.service
    assert int(target.env()["MMSERVE_PORT"]) == facts.port
    # Docker's SIGKILL only after the drain: preStop-free here, so drain + final 5 s grace.
    grace = int(re.fullmatch(r"(\d+)s", service["stop_grace_period"])[1])  # type: ignore[index]
    assert grace > facts.drain_grace_seconds + 5
    assert service["restart"] == "unless-stopped"
    assert service["read_only"] is True
    assert "models:/models:ro" in service["volumes"]
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    if variant == "gpu":
        (device,) = devices["devices"]
        assert device["driver"] == "nvidia"
        assert device["capabilities"] == ["gpu"]
        raw = compose_model["services"][key]["deploy"]["resources"]["reservations"]["devices"]
        assert raw[0]["device_ids"] == [f"${{{name.upper()}_GPU:-{list(CAPS).index(name)}}}"]
        assert env["MMSERVE_DEVICE"] == "cuda"
        assert service["image"].endswith("-cuda")
    else:
        assert devices == {}
        assert env["MMSERVE_DEVICE"] == "cpu"
        assert env["MMSERVE_MODEL"] == ""
        # Answers to the capability's own name, so Envoy's upstreams are the same.
        assert name in service["networks"]["default"]["aliases"]
        assert service["image"].endswith("-cpu")


def test_each_gpu_service_has_its_own_default_gpu(compose_model: Model) -> None:
    services = compose.interpolate(compose_model, {})["services"]
    ids = [
        services[name]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"][0]
        for name in CAPS
    ]
    assert len(set(ids)) == len(ids)


def test_envoy_starts_after_every_capability_is_healthy(compose_model: Model) -> None:
    services = compose_model["services"]
    depends = services["envoy"]["depends_on"]
    expected = {*CAPS, *(f"{n}-cpu" for n in CAPS)}
    assert set(depends) == expected
    assert all(d["condition"] == "service_healthy" for d in depends.values())
    assert all(name in services and "healthcheck" in services[name] for name in depends)
    assert services["envoy"]["profiles"] == services["edge"]["profiles"] == ["gpu", "cpu"]
    assert services["edge"]["network_mode"] == "service:envoy"
    assert services["envoy"]["ports"] == ["${MMSERVE_EDGE_PORT:-8080}:8080"]


def test_envoy_upstreams_are_the_compose_service_names(compose_model: Model) -> None:
    config = yaml.safe_load(envoy_config.RENDERED.read_text())
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    services = compose_model["services"]
    for name, facts in CAPS.items():
        (endpoint,) = clusters[name]["load_assignment"]["endpoints"][0]["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        assert (address["address"], address["port_value"]) == (name, facts.port)
        assert name in services  # the gpu service's own name
        assert clusters[name]["type"] == "STRICT_DNS"


def test_prefetch_fetches_the_served_models(compose_model: Model) -> None:
    services = compose.interpolate(compose_model, {})["services"]
    command = services["prefetch"]["command"]
    for name in CAPS:
        assert services[name]["environment"]["MMSERVE_MODEL"] in command
    assert "models:/models" in services["prefetch"]["volumes"]


def test_env_example_documents_every_variable(compose_model: Model) -> None:
    text = compose.COMPOSE_FILE.read_text()
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    example = compose.COMPOSE_FILE.with_name(".env.example").read_text()
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", example, re.MULTILINE))
    assert used == documented
    # The example's values are the file's own defaults.
    values = dict(re.findall(r"^([A-Z_][A-Z0-9_]*)=(.*)$", example, re.MULTILINE))
    assert compose.interpolate(compose_model, values) == compose.interpolate(compose_model, {})
