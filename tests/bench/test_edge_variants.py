"""The edge profiler's config variants: each takes out exactly what its name says from the
config the local stack renders, and listens on its own ports."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from bench.edge_variants import POLLED, VARIANTS, WORKERS, variant_config
from gateway.render import EdgeConfig, Endpoint, capability_upstream, render


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    config = EdgeConfig(
        upstreams=(capability_upstream("t2i", (Endpoint("127.0.0.1", 50061),)),),
        edge_endpoints=(Endpoint("127.0.0.1", 50050),),
        descriptor_path="/tmp/mmserve.binpb",
    )
    return yaml.safe_load(render(config))


def _manager(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def _filters(config: dict[str, Any]) -> list[str]:
    return [f["name"] for f in _manager(config)["http_filters"]]


def _retries(config: dict[str, Any]) -> int:
    routes = _manager(config)["route_config"]["virtual_hosts"][0]["routes"]
    return sum("retry_policy" in r.get("route", {}) for r in routes)


def test_every_variant_listens_on_its_own_ports(base: dict[str, Any]) -> None:
    for name in [*VARIANTS, *WORKERS, *POLLED]:
        config = variant_config(base, name, 40001, 40002)
        listener = config["static_resources"]["listeners"][0]
        assert listener["address"]["socket_address"]["port_value"] == 40001
        assert config["admin"]["address"]["socket_address"]["port_value"] == 40002
    assert base["admin"]["address"]["socket_address"]["port_value"] != 40002  # a copy


def test_variants_take_out_what_they_name(base: dict[str, Any]) -> None:
    assert "envoy.filters.http.grpc_json_transcoder" in _filters(base)
    assert "envoy.filters.http.grpc_json_transcoder" not in _filters(
        variant_config(base, "no-json", 1, 2)
    )
    no_cors = variant_config(base, "no-cors", 1, 2)
    assert "envoy.filters.http.cors" not in _filters(no_cors)
    host = _manager(no_cors)["route_config"]["virtual_hosts"][0]
    assert "envoy.filters.http.cors" not in host.get("typed_per_filter_config", {})
    assert "access_log" in _manager(base)
    assert "access_log" not in _manager(variant_config(base, "no-access-log", 1, 2))
    assert _retries(base) > 0
    assert _retries(variant_config(base, "no-retries", 1, 2)) == 0
    assert _filters(variant_config(base, "router-only", 1, 2)) == ["envoy.filters.http.router"]
    bare = variant_config(base, "bare", 1, 2)
    assert _retries(bare) == 0
    assert not any("health_checks" in c for c in bare["static_resources"]["clusters"])
    assert variant_config(base, "no-stats", 1, 2)["stats_config"]["stats_matcher"]["reject_all"]
