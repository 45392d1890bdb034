"""The scripts the containers run as probes and hooks, against real servers: deploy/
healthcheck.py (Docker HEALTHCHECK, Compose, exec probes) against a real capability server
(the runtime's sleepy test capability), and deploy/envoy_drain.py (the edge pod's preStop)
against a real Envoy."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import running_server
from tests.support.sleepy_service import CAPABILITY, SERVICE

REPO = Path(__file__).resolve().parents[2]
HEALTHCHECK = REPO / "deploy" / "healthcheck.py"
DRAIN = REPO / "deploy" / "envoy_drain.py"


async def probe(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Runs the script as Docker would (its own process), without blocking the server's loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HEALTHCHECK),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_healthcheck_follows_the_servers_health() -> None:
    async with running_server(CAPABILITY, ["--load-seconds", "1.5"], wait_loaded=False) as server:
        port = str(server.port)
        code, out = await probe("--port", port, "--service", SERVICE)
        assert (code, "NOT_SERVING" in out) == (1, True)  # model still loading
        await asyncio.wait_for(server.wait_loaded(), timeout=60)
        code, out = await probe("--port", port, "--service", SERVICE)
        assert (code, "SERVING" in out) == (0, True)
        code, out = await probe("--port", port)  # "" is the whole server
        assert code == 0
        code, out = await probe("--port", port, "--service", "mmserve.nope.v1.Nothing")
        assert (code, "NOT_FOUND" in out) == (1, True)
        # Port and service from the image's environment, as the Dockerfile's HEALTHCHECK runs it.
        env = {"MMSERVE_PORT": port, "MMSERVE_HEALTH_SERVICE": SERVICE, "PATH": ""}
        assert (await probe(env=env))[0] == 0
        await server.health.enter_graceful_shutdown()  # what SIGTERM does first
        code, out = await probe("--port", port, "--service", SERVICE)
        assert (code, "NOT_SERVING" in out) == (1, True)


async def test_healthcheck_fails_without_a_server() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, out = await probe("--port", str(port), "--timeout", "1")
    assert code == 1
    assert "UNAVAILABLE" in out or "DEADLINE_EXCEEDED" in out


HCM = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)


# Envoy's graceful drain window, short for the test (the edge pod uses 20 s).
DRAIN_1S = ("--drain-time-s", "1", "--drain-strategy", "immediate")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def admin_stats(admin: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{admin}/stats?format=json", timeout=5) as reply:
        stats = json.load(reply)["stats"]
    return {s["name"]: s["value"] for s in stats if "value" in s}


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return int(reply.status)


@pytest.fixture
def envoy(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real Envoy with one listener answering 200, admin on loopback; drain time 1 s."""
    admin_port, listen_port = free_port(), free_port()
    config = tmp_path / "envoy.yaml"
    config.write_text(
        f"""
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }}
static_resources:
  listeners:
  - name: edge
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen_port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          stat_prefix: edge
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: ok }} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""
    )
    envoy_bin = Path(sys.executable).with_name("envoy")
    log = (tmp_path / "envoy.log").open("w")
    process = subprocess.Popen(
        [str(envoy_bin), "-c", str(config), "--disable-hot-restart", "-l", "warning", *DRAIN_1S],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    admin, listener = f"http://127.0.0.1:{admin_port}", f"http://127.0.0.1:{listen_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if get(f"{listener}/") == 200:
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        yield admin, listener
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def test_envoy_drain_stops_the_listeners_after_the_drain_time(envoy: tuple[str, str]) -> None:
    admin, listener = envoy
    assert admin_stats(admin)["listener_manager.listener_stopped"] == 0
    done = subprocess.run(
        [sys.executable, str(DRAIN), "--admin", admin, "--wait", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # Calls still land during the drain window (clients are told to go elsewhere)...
    assert get(f"{listener}/") == 200
    # ...and the listener closes once it has passed.
    deadline = time.monotonic() + 15
    while admin_stats(admin)["listener_manager.listener_stopped"] == 0:
        assert time.monotonic() < deadline, "listener never stopped"
        time.sleep(0.1)
    with pytest.raises(urllib.error.URLError, match="refused"):
        get(f"{listener}/")


def test_envoy_drain_reports_an_unreachable_admin() -> None:
    done = subprocess.run(
        [sys.executable, str(DRAIN), "--admin", f"http://127.0.0.1:{free_port()}", "--wait", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert "envoy_drain:" in done.stderr
