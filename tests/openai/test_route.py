"""The edge's /v1/ route and cluster, as rendered: accepted by Envoy, before the playground's
catch-all, and absent unless asked for."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from gateway.descriptors import build_descriptor_set
from gateway.processes import tool
from gateway.render import EdgeConfig, Endpoint, capability_upstream, render


def _config(descriptors: Path, **extra: object) -> EdgeConfig:
    return EdgeConfig(
        upstreams=(capability_upstream("vision", (Endpoint("127.0.0.1", 50053),)),),
        edge_endpoints=(Endpoint("127.0.0.1", 50050),),
        descriptor_path=str(descriptors),
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def descriptors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_descriptor_set(tmp_path_factory.mktemp("desc") / "mmserve.binpb")


def _routes(text: str) -> list[dict[str, object]]:
    listener = yaml.safe_load(text)["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return list(manager["route_config"]["virtual_hosts"][0]["routes"])


def test_v1_route_renders_and_validates(descriptors: Path, tmp_path: Path) -> None:
    openai = (Endpoint("127.0.0.1", 8090), Endpoint("openai.mmserve.svc", 8090))
    text = render(_config(descriptors, openai=openai, playground=Endpoint("127.0.0.1", 8000)))
    routes = _routes(text)
    prefixes = [r["match"].get("prefix") for r in routes]  # type: ignore[union-attr]
    assert prefixes.index("/v1/") < prefixes.index("/")
    v1 = routes[prefixes.index("/v1/")]["route"]
    assert v1["cluster"] == "openai"  # type: ignore[index]
    assert v1["timeout"] == "0s"  # type: ignore[index]
    clusters = {c["name"]: c for c in yaml.safe_load(text)["static_resources"]["clusters"]}
    assert clusters["openai"]["type"] == "STRICT_DNS"
    assert clusters["openai"]["health_checks"][0]["http_health_check"]["path"] == "/v1/healthz"
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    checked = subprocess.run(
        [tool("envoy"), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr[-2000:]


def test_no_v1_route_unless_asked(descriptors: Path) -> None:
    text = render(_config(descriptors))
    assert "/v1/" not in text
    assert "name: openai" not in text
