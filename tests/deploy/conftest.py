"""What the deployment files must agree with, read from the code itself: the capability
settings classes (ports, drain grace), the edge catalog (service names) and the runtime's
metrics registry (metric names)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import pytest

from deploy.tools import compose, kustomize, manifests
from gateway.catalog import CAPABILITIES
from services.runtime.config import ServiceSettings
from services.runtime.metrics import ServiceMetrics


@dataclass(frozen=True)
class CapabilityFacts:
    name: str
    service: str  # proto service name = grpc.health.v1 service name
    port: int
    metrics_port: int
    drain_grace_seconds: float


def settings_class(name: str) -> type[ServiceSettings]:
    """The ServiceSettings subclass of services/<name>/config.py (its `section` is the name)."""
    module = importlib.import_module(f"services.{name}.config")
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, ServiceSettings)
        and value is not ServiceSettings
        and value.section == name
    ]
    assert len(found) == 1, f"services.{name}.config: expected one settings class, got {found}"
    return found[0]


def _default(cls: type[ServiceSettings], field: str) -> Any:
    return cls.model_fields[field].get_default(call_default_factory=True)


def capability_facts() -> dict[str, CapabilityFacts]:
    facts = {}
    for name, spec in CAPABILITIES.items():
        cls = settings_class(name)
        facts[name] = CapabilityFacts(
            name=name,
            service=spec.service,
            port=_default(cls, "port"),
            metrics_port=_default(cls, "metrics_port"),
            drain_grace_seconds=_default(cls, "drain_grace_seconds"),
        )
    return facts


CAPS = capability_facts()


def metric_names() -> set[str]:
    return {family.name for family in ServiceMetrics("deploy-test").registry.collect()}


@pytest.fixture(scope="session")
def overlays() -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize.build(path) for name, path in manifests.OVERLAYS.items()}


@pytest.fixture(scope="session")
def compose_model() -> dict[str, Any]:
    return compose.load()


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    pod = deployment["spec"]["template"]["spec"]
    matches = [c for c in pod["containers"] if c["name"] == name]
    assert len(matches) == 1, f"{deployment['metadata']['name']}: container {name}"
    return matches[0]


def env_of(container_spec: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container_spec.get("env", [])}
