"""`python -m services.t2i` as operators run it: health, a generation
and a clean exit on SIGTERM."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from mmserve.t2i.v1 import t2i_pb2, t2i_pb2_grpc
from services.t2i.capability import SERVICE_NAME
from tests.support.servers import start_process, wait_for_health
from tests.t2i.helpers import params


async def test_module_serves_and_drains_on_sigterm(tmp_path: Path, sd_dir: Path) -> None:
    server = start_process(
        "services.t2i",
        ["--model", str(sd_dir), "--warmup-steps", "1", "--default-steps", "2"],
        tmp_path / "t2i.log",
    )
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            await wait_for_health(
                channel, health_pb2.HealthCheckResponse.SERVING, SERVICE_NAME, timeout=180
            )
            stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
            reply = await stub.TextToImage(
                t2i_pb2.TextToImageRequest(params=params(seed=1)), timeout=60
            )
            assert reply.result.steps == 2  # the configured default
            assert reply.result.images[0].data.startswith(b"\x89PNG")
        server.terminate(signal.SIGTERM)
        assert server.wait(timeout=60) == 0, server.log()
    finally:
        server.stop()
