"""The gateway's model list against services that come up after it: a capability that did not
answer, or answered while still loading, is asked again within a second, not after the whole
refresh period (the gateway usually starts before the models have loaded)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.openai.upstreams import Upstreams
from gateway.processes import free_port
from tests.support.servers import running_server
from tests.support.sleepy_service import CAPABILITY

pytestmark = pytest.mark.asyncio


async def _listed_within(upstreams: Upstreams, seconds: float) -> set[str]:
    """What models() lists once every capability is ready, polling up to `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        served = await upstreams.models()
        if served and all(model.state == "ready" for model in served.values()):
            return set(served)
        if asyncio.get_running_loop().time() > deadline:
            return {name for name, model in served.items() if model.state == "ready"}
        await asyncio.sleep(0.2)


async def test_a_service_that_comes_up_later_is_listed_long_before_the_refresh_period() -> None:
    port = free_port()
    upstreams = Upstreams({"t2i": f"127.0.0.1:{port}"}, refresh_s=3600)
    try:
        assert await upstreams.models() == {}  # nothing listens yet
        argv = ["--port", str(port), "--load-seconds", "1.5"]
        async with running_server(CAPABILITY, argv, wait_loaded=False):
            # Seen first while loading, then ready: both within seconds, not an hour.
            assert await _listed_within(upstreams, 30) == {"t2i"}
            cached = await upstreams.models()
            assert cached["t2i"].state == "ready"
    finally:
        await upstreams.close()
