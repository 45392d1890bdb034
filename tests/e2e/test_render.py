"""The rendered Envoy config: Envoy itself accepts it, and it says what the edge promises
(per-method stream routes without timeouts or retries, retried unary routes, filter order,
CORS headers, health checks, loopback admin, TLS)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.catalog import CAPABILITIES
from gateway.descriptors import build_descriptor_set
from gateway.edge import healthy_hosts
from gateway.processes import REPO, tool
from gateway.render import (
    EdgeConfig,
    Endpoint,
    at_most_once_methods,
    capability_upstream,
    render,
)
from tests.e2e.support import make_cert


@pytest.fixture(scope="module")
def descriptors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_descriptor_set(tmp_path_factory.mktemp("desc") / "mmserve.binpb")


def config(descriptors: Path, **overrides: Any) -> EdgeConfig:
    upstreams = tuple(
        capability_upstream(name, [Endpoint("127.0.0.1", spec.default_port)])
        for name, spec in CAPABILITIES.items()
    )
    base = EdgeConfig(
        upstreams=upstreams,
        edge_endpoints=(Endpoint("127.0.0.1", 50050),),
        descriptor_path=str(descriptors),
    )
    return replace(base, **overrides)


def validate(text: str, tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    proc = subprocess.run(
        [tool("envoy"), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"envoy rejected the config:\n{proc.stdout}\n{proc.stderr}"
    assert "deprecated" not in (proc.stdout + proc.stderr).lower()


def hcm(doc: dict[str, Any]) -> dict[str, Any]:
    listener = doc["static_resources"]["listeners"][0]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def routes(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return hcm(doc)["route_config"]["virtual_hosts"][0]["routes"]


def test_envoy_accepts_the_rendered_config(descriptors: Path, tmp_path: Path) -> None:
    validate(render(config(descriptors)), tmp_path)


def test_streams_get_their_own_routes_without_timeout(descriptors: Path) -> None:
    doc = yaml.safe_load(render(config(descriptors)))
    unary = next(
        r["route"]
        for r in routes(doc)
        if r["match"].get("prefix") == "/mmserve.t2i.v1.ImageGenerationService/"
    )
    by_path = {r["match"].get("path"): r["route"] for r in routes(doc) if "path" in r["match"]}
    streaming = {
        f"/{spec.service}/{method}"
        for spec in CAPABILITIES.values()
        for method in spec.streaming_methods
    }
    assert "/mmserve.t2i.v1.ImageGenerationService/StreamTextToImage" in streaming
    assert "/mmserve.omni.v1.OmniService/StreamSessionEvents" in streaming
    once = {
        f"/{spec.service}/{method}"
        for spec in CAPABILITIES.values()
        for method in at_most_once_methods(spec.name)
    }
    assert set(by_path) == streaming | once
    for path, route in by_path.items():
        if path in once:
            continue
        assert route["timeout"] == "0s"
        # Retried like unary calls, only before any response header (a stream's first event
        # carries them): a stream racing a draining replica's health check is not lost.
        assert route["retry_policy"] == unary["retry_policy"]
        # No route max_stream_duration: Envoy would rewrite grpc-timeout and race the deadline.
        assert "max_stream_duration" not in route
        # Longer than the services' 5 s heartbeat, so live streams are never idle-closed.
        assert float(route["idle_timeout"].rstrip("s")) > 5


def test_unary_routes_retry_only_calls_that_never_started(descriptors: Path) -> None:
    doc = yaml.safe_load(render(config(descriptors, num_retries=3)))
    prefixes = {r["match"]["prefix"]: r["route"] for r in routes(doc) if "prefix" in r["match"]}
    for spec in CAPABILITIES.values():
        route = prefixes[spec.path_prefix]
        assert route["cluster"] == spec.name
        policy = route["retry_policy"]
        assert set(policy["retry_on"].split(",")) == {
            "connect-failure",
            "refused-stream",
            "reset",
            "unavailable",
            "resource-exhausted",
            "cancelled",
        }
        assert policy["num_retries"] == 3
        assert policy["retry_back_off"]["base_interval"] == "0.05s"
        assert policy["retry_host_predicate"][0]["name"].endswith("previous_hosts")
        assert policy["host_selection_retry_max_attempts"] == 20
        assert route["timeout"] == route["idle_timeout"] == "600s"
        assert "max_stream_duration" not in route
    # Health and reflection of every capability go to the edge service.
    assert prefixes["/grpc.health.v1.Health/"]["cluster"] == "edge"
    assert prefixes["/grpc.reflection."]["cluster"] == "edge"
    # Stream routes come first: Envoy takes the first match.
    order = [r["match"].get("path") or r["match"]["prefix"] for r in routes(doc)]
    stream = order.index("/mmserve.t2i.v1.ImageGenerationService/StreamTextToImage")
    assert stream < order.index("/mmserve.t2i.v1.ImageGenerationService/")


def test_calls_that_must_not_run_twice_are_retried_only_before_reaching_a_replica(
    descriptors: Path,
) -> None:
    doc = yaml.safe_load(render(config(descriptors)))
    order = [r["match"].get("path") or r["match"]["prefix"] for r in routes(doc)]
    by_path = {r["match"].get("path"): r["route"] for r in routes(doc) if "path" in r["match"]}
    omni = "/mmserve.omni.v1.OmniService/"
    for method in ("PushSessionInput", "RegisterVoice", "OpenSession", "CancelJob"):
        route = by_path[omni + method]
        assert route["cluster"] == "omni"
        assert set(route["retry_policy"]["retry_on"].split(",")) == {
            "connect-failure",
            "refused-stream",
            "reset-before-request",
            "unavailable",
            "resource-exhausted",
        }
        assert route["timeout"] == "600s"
        # Before the prefix route of the service, which retries after a reset too.
        assert order.index(omni + method) < order.index(omni)
    assert "/mmserve.t2i.v1.ImageGenerationService/CancelJob" in by_path
    # Inference and reads keep the prefix route's retries.
    assert omni + "Chat" not in by_path
    assert omni + "ListVoices" not in by_path


def test_filters_cors_and_admin(descriptors: Path) -> None:
    doc = yaml.safe_load(render(config(descriptors, listen_host="0.0.0.0")))
    names = [f["name"] for f in hcm(doc)["http_filters"]]
    assert names == [
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.cors",
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.filters.http.stateful_session",
        "envoy.filters.http.router",
    ]
    vhost = hcm(doc)["route_config"]["virtual_hosts"][0]
    cors = vhost["typed_per_filter_config"]["envoy.filters.http.cors"]
    exposed = {h.strip() for h in cors["expose_headers"].split(",")}
    assert {"grpc-status", "grpc-message", "x-request-id", "mmserve-job-id"} <= exposed
    allowed = {h.strip() for h in cors["allow_headers"].split(",")}
    assert "mmserve-job-id-early" in allowed
    transcoder = hcm(doc)["http_filters"][2]["typed_config"]
    assert transcoder["auto_mapping"] is True
    assert transcoder["print_options"]["stream_newline_delimited"] is True
    assert set(transcoder["services"]) >= {spec.service for spec in CAPABILITIES.values()}
    cap = hcm(doc)["common_http_protocol_options"]["max_stream_duration"]
    assert cap == "3600s"
    # The edge listens where asked; admin never leaves loopback.
    assert doc["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    listener = doc["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"]["address"] == "0.0.0.0"


def test_clusters_balance_check_and_break(descriptors: Path) -> None:
    doc = yaml.safe_load(render(config(descriptors)))
    clusters = {c["name"]: c for c in doc["static_resources"]["clusters"]}
    assert set(clusters) == {*CAPABILITIES, "edge"}
    for spec in CAPABILITIES.values():
        cluster = clusters[spec.name]
        assert cluster["lb_policy"] == "LEAST_REQUEST"
        options = cluster["typed_extension_protocol_options"]
        http = options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        assert "http2_protocol_options" in http["explicit_http_config"]
        check = cluster["health_checks"][0]
        assert check["grpc_health_check"]["service_name"] == spec.service
        assert check["no_traffic_interval"] == check["interval"]
        assert cluster["outlier_detection"]["consecutive_gateway_failure"] == 3
        assert cluster["outlier_detection"]["enforcing_consecutive_5xx"] == 0
        assert cluster["circuit_breakers"]["thresholds"][0]["max_requests"] == 2048
    assert clusters["edge"]["health_checks"][0]["grpc_health_check"]["service_name"] == (
        "mmserve.edge"
    )


def test_hostnames_become_dns_clusters(descriptors: Path, tmp_path: Path) -> None:
    upstream = capability_upstream("vision", [Endpoint("vision.mmserve.svc", 50053)])
    text = render(config(descriptors, upstreams=(upstream,)))
    doc = yaml.safe_load(text)
    clusters = {c["name"]: c for c in doc["static_resources"]["clusters"]}
    assert clusters["vision"]["type"] == "STRICT_DNS"
    assert clusters["edge"]["type"] == "STATIC"
    assert "mmserve.t2i.v1" not in text  # only what is routed


def test_tls_config_is_accepted(descriptors: Path, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    text = render(config(descriptors, tls_cert=str(cert), tls_key=str(key)))
    validate(text, tmp_path)
    chain = yaml.safe_load(text)["static_resources"]["listeners"][0]["filter_chains"][0]
    tls = chain["transport_socket"]["typed_config"]["common_tls_context"]
    assert tls["alpn_protocols"] == ["h2", "http/1.1"]
    with pytest.raises(ValueError, match="go together"):
        config(descriptors, tls_cert=str(cert))


def test_descriptor_set_has_contracts_errors_and_health(descriptors: Path) -> None:
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptors.read_bytes())
    names = {f.name for f in fds.file}
    assert {
        "mmserve/t2i/v1/t2i.proto",
        "mmserve/vision/v1/vision.proto",
        "google/rpc/error_details.proto",
    } <= names
    assert any(f.package == "grpc.health.v1" for f in fds.file)


def test_render_command_line(tmp_path: Path) -> None:
    out = tmp_path / "envoy.yaml"
    proc = subprocess.run(
        [
            sys.executable, "-m", "gateway.render",
            "--upstream", "vision=127.0.0.1:50053,127.0.0.1:50063",
            "--edge-service", "127.0.0.1:50050",
            "--descriptors", str(tmp_path / "d.binpb"),
            "--cors-origin", "https://app.example.com",
            "--listen-port", "8443", "--unary-timeout-s", "120", "--no-access-log",
            "--out", str(out),
        ],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(out.read_text())
    vision = next(c for c in doc["static_resources"]["clusters"] if c["name"] == "vision")
    ports = [
        e["endpoint"]["address"]["socket_address"]["port_value"]
        for e in vision["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert ports == [50053, 50063]
    assert "access_log" not in hcm(doc)
    vision_prefix = "/mmserve.vision.v1.VisionService/"
    unary = next(r for r in routes(doc) if r["match"].get("prefix") == vision_prefix)
    assert unary["route"]["timeout"] == "120s"
    bad = subprocess.run(
        [sys.executable, "-m", "gateway.render", "--upstream", "nope=1.2.3.4:1"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "unknown capability 'nope'" in bad.stderr


def test_healthy_hosts_reads_envoy_admin() -> None:
    def host(**status: object) -> dict[str, object]:
        return {"health_status": {"eds_health_status": "HEALTHY", **status}}

    admin = {
        "cluster_statuses": [
            {"name": "t2i", "host_statuses": [host(), host(failed_active_health_check=True)]},
            {"name": "vl", "host_statuses": [host(failed_outlier_check=True)]},
            {"name": "vision", "host_statuses": [host(eds_health_status="DRAINING")]},
            {"name": "omni"},
        ]
    }
    assert healthy_hosts(admin) == {"t2i": 1, "vl": 0, "vision": 0, "omni": 0}
