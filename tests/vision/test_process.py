"""`python -m services.vision` as operators run it: health, one request, clean SIGTERM exit,
and `--help`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from mmserve.vision.v1 import vision_pb2, vision_pb2_grpc
from services.vision.capability import SERVICE
from tests.support.servers import start_process, wait_for_health
from tests.vision.helpers import image_pb, noise_image

REPO = Path(__file__).resolve().parents[2]


async def test_module_serves_until_sigterm(tmp_path: Path) -> None:
    process = start_process(
        "services.vision", ["--model", "builtin:dinov2", "--torch-threads", "1"], tmp_path / "log"
    )
    try:
        async with grpc.aio.insecure_channel(process.target) as channel:
            await wait_for_health(channel, health_pb2.HealthCheckResponse.SERVING, SERVICE)
            stub = vision_pb2_grpc.VisionServiceStub(channel)
            reply = await stub.EmbedImages(
                vision_pb2.EmbedImagesRequest(images=[image_pb(noise_image(1))]), timeout=30
            )
            assert reply.dimension == 32
        process.terminate()
        code = await asyncio.to_thread(process.wait, 60)
        assert code == 0, process.log()
    finally:
        process.stop()


def test_help_lists_the_settings_and_exits_0() -> None:
    """Every settings help text reaches argparse, which formats it with `%`."""
    result = subprocess.run(
        [sys.executable, "-m", "services.vision", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "--max-return-wait-ms" in result.stdout
    assert "10% of the time" in " ".join(result.stdout.split())
    assert "builtin:clip" in result.stdout
