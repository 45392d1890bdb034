"""Faults inside real models (tiny random-weight models of the real architectures, served in
process): a diffusion UNet that raises or runs out of device memory mid-denoise fails only that
job, and a poisoned input that makes CLIP's forward pass raise fails only its own request, not
the other callers' requests micro-batched with it."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio
import torch
from PIL import Image

from mmserve.common.v1 import media_pb2
from mmserve.t2i.v1 import t2i_pb2, t2i_pb2_grpc
from mmserve.vision.v1 import vision_pb2, vision_pb2_grpc
from services.runtime.server import ServiceServer
from services.t2i.capability import CAPABILITY as T2I_CAPABILITY
from services.vision.capability import CAPABILITY as VISION_CAPABILITY
from tests.support.servers import health_status, running_server

pytestmark = pytest.mark.asyncio(loop_scope="module")
torch.set_num_threads(1)  # two cores shared with the servers of other suites
SERVING = 1
WAIT = 120


@dataclass
class Served:
    server: ServiceServer
    channel: grpc.aio.Channel


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def t2i() -> AsyncIterator[Served]:
    async with running_server(T2I_CAPABILITY, ["--warmup-steps", "1"]) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Served(server, channel)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vision() -> AsyncIterator[Served]:
    # Companions wait up to 300 ms, so concurrent requests share one micro-batch.
    async with running_server(VISION_CAPABILITY, ["--max-batch-wait-ms", "300"]) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Served(server, channel)


class Tripwire:
    """Wraps a module's forward: the `at`-th call after arming raises `error` (once)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.original = module.forward
        self.calls = 0
        self.at: int | None = None
        self.error: Callable[[], BaseException] = lambda: RuntimeError("unset")
        module.forward = self.forward  # type: ignore[method-assign]

    def arm(self, at: int, error: Callable[[], BaseException]) -> None:
        self.calls, self.at, self.error = 0, at, error

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.at is not None:
            self.calls += 1
            if self.calls == self.at:
                self.at = None
                raise self.error()
        return self.original(*args, **kwargs)

    def remove(self) -> None:
        self.module.forward = self.original  # type: ignore[method-assign]


def t2i_request(steps: int, seed: int) -> t2i_pb2.TextToImageRequest:
    return t2i_pb2.TextToImageRequest(
        params=t2i_pb2.GenerationParams(
            prompt="a lighthouse at dusk", num_inference_steps=steps, seed=seed
        )
    )


async def stream_outcome(call: Any) -> tuple[grpc.StatusCode, list[str]]:
    kinds: list[str] = []
    try:
        while (event := await call.read()) is not grpc.aio.EOF:
            kinds.append(event.WhichOneof("event"))
    except grpc.aio.AioRpcError as error:
        return error.code(), kinds
    return grpc.StatusCode.OK, kinds


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (lambda: RuntimeError("illegal memory access (simulated)"), grpc.StatusCode.INTERNAL),
        (
            lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
    ],
    ids=["raises", "out_of_memory"],
)
async def test_unet_fault_mid_denoise_fails_only_that_job(
    t2i: Served, error: Callable[[], BaseException], code: grpc.StatusCode
) -> None:
    engine: Any = t2i.server.runtime.engine
    wire = Tripwire(engine.pipelines.text_to_image.unet)
    try:
        stub = t2i_pb2_grpc.ImageGenerationServiceStub(t2i.channel)
        wire.arm(3, error)  # the third denoising step of the next job
        doomed = stub.StreamTextToImage(t2i_request(steps=6, seed=1), timeout=WAIT)
        assert (await doomed.read()).WhichOneof("event") == "accepted"  # it runs first
        behind = stub.StreamTextToImage(t2i_request(steps=2, seed=2), timeout=WAIT)
        (doomed_code, doomed_kinds), (behind_code, behind_kinds) = await asyncio.wait_for(
            asyncio.gather(stream_outcome(doomed), stream_outcome(behind)), WAIT
        )
    finally:
        wire.remove()
    assert doomed_code == code
    assert doomed_kinds.count("step") == 2, doomed_kinds
    assert behind_code == grpc.StatusCode.OK
    assert behind_kinds[-1] == "result"
    assert await health_status(t2i.channel, "mmserve.t2i.v1.ImageGenerationService") == SERVING
    reply = await stub.TextToImage(t2i_request(steps=2, seed=3), timeout=WAIT)
    assert reply.result.images[0].data.startswith(b"\x89PNG")


def png(pixels: np.ndarray) -> media_pb2.Image:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "PNG")
    return media_pb2.Image(data=buffer.getvalue(), format=media_pb2.IMAGE_FORMAT_PNG)


async def test_poisoned_input_fails_only_its_request_in_a_shared_batch(vision: Served) -> None:
    engine: Any = vision.server.runtime.engine
    original = engine._image_features

    def features(tensors: dict[str, torch.Tensor], poolings: Any) -> torch.Tensor:
        # A flat black image stands for an input that crashes the model (a kernel bug, a
        # shape the model mishandles): the whole forward pass raises.
        pixels = tensors["pixel_values"]
        flat = pixels.flatten(2).std(dim=2).amax(dim=1) < 1e-6  # every channel constant
        if bool(flat.any()):
            raise RuntimeError("kernel failed on this input (simulated)")
        return original(tensors, poolings)

    engine._image_features = features
    try:
        stub = vision_pb2_grpc.VisionServiceStub(vision.channel)
        rng = np.random.default_rng(7)
        good = [png(rng.integers(0, 256, (32, 32, 3))) for _ in range(5)]
        poison = png(np.zeros((32, 32, 3)))
        requests = [vision_pb2.EmbedImagesRequest(images=[image]) for image in good]
        requests.insert(2, vision_pb2.EmbedImagesRequest(images=[poison]))

        async def call(request: vision_pb2.EmbedImagesRequest) -> Any:
            try:
                return await stub.EmbedImages(request, timeout=WAIT)
            except grpc.aio.AioRpcError as error:
                return error.code()

        replies = await asyncio.wait_for(asyncio.gather(*(call(r) for r in requests)), WAIT)
    finally:
        del engine._image_features
    assert replies[2] == grpc.StatusCode.INTERNAL
    fine = [r for i, r in enumerate(replies) if i != 2]
    assert all(isinstance(r, vision_pb2.EmbedImagesResponse) for r in fine), replies
    # They really shared the device call with the poisoned request (then were split off it).
    assert max(r.usage.batch_size for r in fine) >= 2
    assert all(len(r.embeddings) == 1 for r in fine)
    assert await health_status(vision.channel, "mmserve.vision.v1.VisionService") == SERVING
