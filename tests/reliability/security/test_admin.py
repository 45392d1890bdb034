"""Envoy's admin interface (it can stop Envoy, dump its config and flip health) is reachable on
loopback only: the rendered config binds it to 127.0.0.1 whatever the listener's address, the
Kubernetes config too, the running Envoy's listening socket is bound to 127.0.0.1, and a
connection to the admin port through the machine's other addresses is refused."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.catalog import CAPABILITIES
from gateway.render import EdgeConfig, Endpoint, capability_upstream, render
from gateway.stack import Stack
from tests.support.servers import REPO


def admin_address(doc: dict[str, Any]) -> str:
    return str(doc["admin"]["address"]["socket_address"]["address"])


def test_rendered_admin_binds_loopback_even_when_the_edge_is_public(tmp_path: Path) -> None:
    config = EdgeConfig(
        upstreams=tuple(
            capability_upstream(name, [Endpoint("10.0.0.5", 50051 + i)])
            for i, name in enumerate(CAPABILITIES)
        ),
        edge_endpoints=(Endpoint("127.0.0.1", 50050),),
        descriptor_path=str(tmp_path / "mmserve.binpb"),
        listen_host="0.0.0.0",
        admin_port=9901,
    )
    doc = yaml.safe_load(render(config))
    listener = doc["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert listener["address"] == "0.0.0.0"
    assert admin_address(doc) == "127.0.0.1"


def test_kubernetes_edge_config_keeps_admin_on_loopback() -> None:
    doc = yaml.safe_load((REPO / "deploy/k8s/base/edge/envoy.yaml").read_text())
    assert admin_address(doc) == "127.0.0.1"


def other_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback."""
    found: set[str] = set()
    try:
        out = subprocess.run(
            ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=10
        ).stdout
        for line in out.splitlines():
            parts = line.split()
            if "inet" in parts:
                found.add(parts[parts.index("inet") + 1].split("/")[0])
    except (OSError, subprocess.SubprocessError):
        pass
    with contextlib.suppress(OSError):
        found.update(socket.gethostbyname_ex(socket.gethostname())[2])
    return sorted(a for a in found if not a.startswith("127."))


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on `port` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_running_envoy_admin_is_loopback_only(edge: Stack) -> None:
    # It is up and answering on loopback (the edge service reads /clusters there)...
    with urllib.request.urlopen(f"{edge.admin_url}/ready", timeout=5) as reply:
        assert reply.status == 200
    # ...its listening socket is bound to 127.0.0.1, not to a wildcard...
    assert listening_addresses(edge.admin_port) == {"127.0.0.1"}
    # ...and through every other address of this machine the port is closed.
    others = other_addresses()
    if not others:
        pytest.skip("this machine has no non-loopback IPv4 address")
    for address in others:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(3)
            assert sock.connect_ex((address, edge.admin_port)) != 0, address
