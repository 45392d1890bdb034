"""The stacks the edge tests talk to: real Envoy, the edge service and services on loopback
ports, started by gateway.stack exactly as `python -m gateway.stack` starts them."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.catalog import CAPABILITIES, capability
from gateway.render import EdgeConfig
from gateway.stack import ServiceGroup, Stack, StackConfig, available_capabilities
from tests.e2e.support import SLEEPY

# Two cores shared by every process of a stack: keep each service's torch small.
SERVICE_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass
class WebServer:
    origin: str
    root: Path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    """A static file server for the browser page; its origin is allowed by the edge's CORS."""
    root = tmp_path_factory.mktemp("web")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield WebServer(f"http://127.0.0.1:{server.server_address[1]}", root)
    finally:
        server.shutdown()
        server.server_close()


def sleepy_config(run_dir: Path, replicas: int = 1, origins: tuple[str, ...] = ()) -> StackConfig:
    """t2i served by the sleepy test engine on the real runtime: 0.2 s per step, so stream
    timing is visible, and no model to load."""
    group = ServiceGroup(
        capability("t2i"),
        replicas=replicas,
        module=SLEEPY,
        args=("--step-seconds", "0.2", "--drain-grace-seconds", "20", "--log-level", "INFO"),
    )
    edge = EdgeConfig(
        upstreams=(),
        edge_endpoints=(),
        descriptor_path="",
        cors_origins=origins or EdgeConfig.cors_origins,
        # Ejections in the replica tests should end within the test.
        outlier_ejection_s=2.0,
    )
    return StackConfig(
        groups=[group],
        port=0,
        admin_port=0,
        run_dir=run_dir,
        ready_timeout=120,
        stop_grace=20,
        env=SERVICE_ENV,
        edge=edge,
    )


@pytest.fixture(scope="session")
def sleepy_stack(
    tmp_path_factory: pytest.TempPathFactory, web_server: WebServer
) -> Iterator[Stack]:
    """One sleepy t2i replica behind Envoy, shared by the tests that do not stop replicas."""
    run_dir = tmp_path_factory.mktemp("sleepy-stack")
    stack = Stack(sleepy_config(run_dir, 1, (web_server.origin,)))
    stack.start()
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def real_stack(tmp_path_factory: pytest.TempPathFactory, web_server: WebServer) -> Iterator[Stack]:
    """Every capability service of this checkout, on its default built-in model, behind Envoy
    (what `python -m gateway.stack` runs). A capability whose service is missing fails here."""
    present = available_capabilities()
    missing = [name for name in CAPABILITIES if name not in present]
    assert not missing, f"no services/<name>/__main__.py for {missing}"
    config = StackConfig(
        groups=[ServiceGroup(capability(name)) for name in present],
        port=0,
        admin_port=0,
        run_dir=tmp_path_factory.mktemp("real-stack"),
        ready_timeout=240,
        stop_grace=20,
        env=SERVICE_ENV,
        edge=EdgeConfig(
            upstreams=(),
            edge_endpoints=(),
            descriptor_path="",
            cors_origins=(web_server.origin,),
        ),
    )
    stack = Stack(config)
    stack.start()
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()
