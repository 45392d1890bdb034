"""Helpers of the t2i tests: requests, error details, reference pipelines and images."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch
from PIL import Image

from mmserve.t2i.v1 import t2i_pb2, t2i_pb2_grpc
from services.runtime.errors import JobCancelled
from services.runtime.executor import JobContext
from services.runtime.images import encode_image
from services.t2i.capability import CAPABILITY
from services.t2i.config import T2ISettings
from services.t2i.engine import T2IEngine
from services.t2i.validation import GenerationRequest
from tests.support.servers import running_server

PROMPT = "a red cat on a blue house"
# Server flags for 64x64 outputs: fast on the tiny models (their defaults are 128-512 px).
SMALL = ["--default-width", "64", "--default-height", "64"]
# A batch computes each row with other rows beside it in the same matrix products: the sums
# may round differently, so batched rows are compared with solo runs within a small margin.
MAX_PIXEL_DIFFERENCE = 3


def params(**fields: Any) -> t2i_pb2.GenerationParams:
    fields.setdefault("prompt", PROMPT)
    return t2i_pb2.GenerationParams(**fields)


@asynccontextmanager
async def served(argv: list[str]) -> AsyncIterator[t2i_pb2_grpc.ImageGenerationServiceStub]:
    """An in-process t2i server (loaded and warm) and a stub connected to it."""
    async with running_server(CAPABILITY, ["--warmup-steps", "1", *argv]) as server:
        assert server.runtime.load_error == ""
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield t2i_pb2_grpc.ImageGenerationServiceStub(channel)


def generators(seed: int, count: int) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(count)]


def png_bytes(images: list[Image.Image]) -> list[bytes]:
    return [encode_image(image, "PNG") for image in images]


def pixels(data: bytes) -> np.ndarray[Any, Any]:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def load_reference(folder: Path, cls: Any) -> Any:
    """The same model folder loaded in this process with the plain diffusers API."""
    pipe = cls.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def solid_png(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    """An input image with some structure (a gradient over a colour), as PNG."""
    width, height = size
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    base = np.array(color, dtype=np.float32)[None, None, :]
    array = np.clip(base * 0.5 + ramp * 0.5, 0, 255).astype(np.uint8)
    array = np.broadcast_to(array, (height, width, 3)).copy()
    return encode_image(Image.fromarray(array, "RGB"), "PNG")


async def job_id_at_step_two(stream: Any) -> str:
    """Reads a streaming generation until its second step and returns its job id."""
    job_id = ""
    while (event := await stream.read()) is not grpc.aio.EOF:
        if event.HasField("accepted"):
            job_id = event.accepted.job_id
        if event.HasField("step") and event.step.progress.step >= 2:
            return job_id
    raise AssertionError("the long job ended by itself")


def close_images(batched: list[Any], solo: list[Any]) -> None:
    """Images of batched rows against the same rows' solo runs, within MAX_PIXEL_DIFFERENCE."""
    assert len(batched) == len(solo)
    for got, expected in zip(batched, solo, strict=True):
        difference = np.abs(np.asarray(got, np.int16) - np.asarray(expected, np.int16))
        assert difference.max() <= MAX_PIXEL_DIFFERENCE


def small_engine(folder: Path) -> T2IEngine:
    """A loaded engine on `folder` whose default size is 64x64 (fast on the tiny models)."""
    engine = T2IEngine(
        T2ISettings(model=str(folder), warmup_steps=0, default_width=64, default_height=64)
    )
    engine.load()
    return engine


def plan_for(engine: T2IEngine, **fields: Any) -> Any:
    """The engine's plan of a request (3 steps unless given)."""
    fields.setdefault("steps", 3)
    return engine.plan(GenerationRequest(**fields))


def batch_cancelling_row_one_at_step_two(
    engine: T2IEngine,
    plans: Sequence[Any],
    denoiser: torch.nn.Module,
    rows_of: Callable[[Any, dict[str, Any]], tuple[int, ...]],
) -> tuple[list[tuple[int, ...]], list[Any]]:
    """Runs `plans` as one batch and cancels the second plan's row at step 2. Returns what
    `rows_of(args, kwargs)` reads from every denoiser call (its inputs' row counts) and the
    batch's outputs; checks that the other rows equal their solo runs."""
    contexts = [JobContext(f"job-{i}", "text_to_image") for i in range(len(plans))]

    def cancel_row_one(step: int, total: int, extra: dict[str, Any]) -> None:
        if step == 2:
            contexts[1].cancel.cancel(JobCancelled("cancelled by client"))

    contexts[0] = JobContext("job-0", "text_to_image", on_progress=cancel_row_one)
    calls: list[tuple[int, ...]] = []
    hook = denoiser.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(rows_of(args, kwargs)), with_kwargs=True
    )
    try:
        outputs = engine.generate_batch(contexts, list(plans))
    finally:
        hook.remove()
    assert isinstance(outputs[1], JobCancelled)
    for index, plan in enumerate(plans):
        if index == 1:
            continue
        output = outputs[index]
        assert not isinstance(output, Exception)
        assert output.steps == plan.steps
        close_images(output.images, engine.generate(JobContext("solo", "t"), plan).images)
    return calls, outputs


def batch_equals_solo_runs(engine: T2IEngine, plans: Sequence[Any]) -> None:
    """Runs `plans` as one denoising batch and checks each row against its solo run."""
    contexts = [JobContext(f"job-{i}", "text_to_image") for i in range(len(plans))]
    outputs = engine.generate_batch(contexts, list(plans))
    for plan, output in zip(plans, outputs, strict=True):
        assert not isinstance(output, Exception)
        close_images(output.images, engine.generate(JobContext("solo", "t"), plan).images)
