"""Client tests: the SDK and the CLI against real servers on loopback ports (see servers.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The SDK lives in clients/python; until the project installs it (pyproject's package list),
# make it importable here and in the CLI subprocesses the tests start.
SDK_PATH = Path(__file__).resolve().parents[2] / "clients" / "python"
if str(SDK_PATH) not in sys.path:
    sys.path.insert(0, str(SDK_PATH))

from tests.clients.servers import FIXTURES, Served, ServerPool  # noqa: E402


@pytest.fixture(scope="package")
def servers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerPool]:
    """Starts every server the selected tests need at once, stops them after the package."""
    needed = {
        name
        for item in request.session.items
        for name in getattr(item, "fixturenames", ())
        if name in FIXTURES
    }
    pool = ServerPool(tmp_path_factory.mktemp("servers"))
    pool.launch(needed)
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture(scope="package")
def t2i_server(servers: ServerPool) -> Served:
    return servers.ready("t2i_server")


@pytest.fixture(scope="package")
def vl_server(servers: ServerPool) -> Served:
    return servers.ready("vl_server")


@pytest.fixture(scope="package")
def vision_server(servers: ServerPool) -> Served:
    return servers.ready("vision_server")


@pytest.fixture(scope="package")
def omni_server(servers: ServerPool) -> Served:
    return servers.ready("omni_server")


@pytest.fixture(scope="package")
def sleepy_server(servers: ServerPool) -> Served:
    return servers.ready("sleepy_server")


@pytest.fixture(scope="package")
def limited_server(servers: ServerPool) -> Served:
    return servers.ready("limited_server")
