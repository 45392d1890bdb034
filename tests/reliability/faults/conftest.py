"""Fixtures of the fault suite: the faulty test service in process (no model: faults and
cancellations are cued by prompts) and a stub on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from mmserve.t2i.v1 import t2i_pb2_grpc
from services.runtime.server import ServiceServer
from tests.reliability.faults.faulty_service import CAPABILITY
from tests.support.servers import running_server


@pytest.fixture
async def faulty() -> AsyncIterator[ServiceServer]:
    """50 ms per step: a 400-step job runs 20 s, far longer than any test waits on it."""
    async with running_server(CAPABILITY, ["--step-seconds", "0.05"]) as server:
        yield server


@pytest.fixture
async def stub(faulty: ServiceServer) -> AsyncIterator[t2i_pb2_grpc.ImageGenerationServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{faulty.port}") as channel:
        yield t2i_pb2_grpc.ImageGenerationServiceStub(channel)
