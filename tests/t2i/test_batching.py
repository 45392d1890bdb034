"""Denoising batches on the tiny Stable Diffusion: rows of one batch against their solo runs,
in the engine and through a served TextToImage, and a cancelled row."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio

from mmserve.common.v1 import job_pb2
from mmserve.t2i.v1 import t2i_pb2
from services.runtime.errors import JobCancelled
from services.runtime.executor import JobContext
from services.t2i.batching import batch_key
from services.t2i.config import T2ISettings
from services.t2i.engine import PreviewFrame, T2IEngine
from services.t2i.validation import GenerationRequest
from tests.t2i.helpers import params, pixels, served

WAIT = 120.0
# A batch computes each row with other rows beside it in the same matrix products: the sums
# may round differently, so rows are compared within a small margin, not byte for byte.
MAX_PIXEL_DIFFERENCE = 3


@pytest.fixture(scope="module")
def engine(sd_dir: Path) -> T2IEngine:
    loaded = T2IEngine(T2ISettings(model=str(sd_dir), warmup_steps=0))
    loaded.load()
    return loaded


def _plan(engine: T2IEngine, **fields: Any) -> Any:
    fields.setdefault("steps", 3)
    return engine.plan(GenerationRequest(**fields))


def _close(batched: list[Any], solo: list[Any]) -> None:
    assert len(batched) == len(solo)
    for got, expected in zip(batched, solo, strict=True):
        difference = np.abs(np.asarray(got, np.int16) - np.asarray(expected, np.int16))
        assert difference.max() <= MAX_PIXEL_DIFFERENCE


def test_batch_key_shares_shape_and_splits_everything_else(engine: T2IEngine) -> None:
    base = _plan(engine, prompt="a cat", seed=1)
    assert batch_key(base) == batch_key(replace(base, prompt="a dog", seed=9, num_images=2))
    assert batch_key(base) == batch_key(replace(base, negative_prompt="blurry"))
    for changed in (
        replace(base, width=base.width * 2),
        replace(base, steps=4),
        replace(base, guidance_scale=2.0),
    ):
        assert batch_key(changed) != batch_key(base)


def test_rows_of_a_batch_equal_their_solo_runs(engine: T2IEngine) -> None:
    plans = [
        _plan(engine, prompt="a red cat", seed=3),
        _plan(engine, prompt="a blue house", negative_prompt="fog", seed=11, num_images=2),
        _plan(engine, prompt="a green tree", seed=2**64 - 1),
    ]
    progress: list[list[tuple[int, int]]] = [[] for _ in plans]
    frames: list[list[PreviewFrame]] = [[] for _ in plans]
    contexts = [
        JobContext(
            f"job-{i}",
            "text_to_image",
            on_progress=lambda step, total, extra, i=i: progress[i].append((step, total)),
            on_output=frames[i].append,
        )
        for i in range(len(plans))
    ]
    plans[0] = replace(plans[0], preview_every=1)
    outputs = engine.generate_batch(contexts, plans)
    for index, plan in enumerate(plans):
        output = outputs[index]
        assert not isinstance(output, Exception)
        solo = engine.generate(JobContext("solo", "text_to_image"), plan)
        assert (output.seed, output.steps) == (plan.seed, 3)
        assert output.prompt_tokens == solo.prompt_tokens
        _close(output.images, solo.images)
        assert progress[index] == [(1, 3), (2, 3), (3, 3)]
    # Previews only for the row that asked, from its own latents.
    assert [frame.step for frame in frames[0]] == [1, 2, 3]
    assert frames[1] == frames[2] == []


def test_a_cancelled_row_fails_alone_and_the_others_finish(engine: T2IEngine) -> None:
    plans = [_plan(engine, prompt="a cat", seed=1), _plan(engine, prompt="a dog", seed=2)]
    contexts = [JobContext(f"job-{i}", "text_to_image") for i in range(2)]

    def cancel_first(step: int, total: int, extra: dict[str, Any]) -> None:
        contexts[0].cancel.cancel(JobCancelled("cancelled by client"))

    contexts[1] = JobContext("job-1", "text_to_image", on_progress=cancel_first)
    outputs = engine.generate_batch(contexts, plans)
    assert isinstance(outputs[0], JobCancelled)
    assert not isinstance(outputs[1], Exception)
    _close(outputs[1].images, engine.generate(JobContext("solo", "t"), plans[1]).images)


def test_a_batch_whose_rows_are_all_cancelled_stops(engine: T2IEngine) -> None:
    plans = [_plan(engine, prompt="a cat", seed=1, steps=20), _plan(engine, prompt="a dog")]
    plans[1] = replace(plans[1], steps=20)
    contexts = [JobContext(f"job-{i}", "text_to_image") for i in range(2)]
    steps: list[int] = []

    def cancel_all(step: int, total: int, extra: dict[str, Any]) -> None:
        steps.append(step)
        for ctx in contexts:
            ctx.cancel.cancel(JobCancelled("cancelled by client"))

    contexts[0] = JobContext("job-0", "text_to_image", on_progress=cancel_all)
    with pytest.raises(JobCancelled):
        engine.generate_batch(contexts, plans)
    assert steps == [1]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stub(sd_dir: Path):
    argv = ["--model", str(sd_dir), "--max-steps", "200", "--max-batch-size", "4"]
    async with served(argv) as connected:
        yield connected


@pytest.mark.asyncio(loop_scope="module")
async def test_queued_requests_of_one_shape_run_as_one_batch(stub) -> None:
    # A long job holds the device, so the next three queue together behind it.
    blocker = stub.StreamTextToImage(
        t2i_pb2.TextToImageRequest(params=params(seed=1, num_inference_steps=200)), timeout=WAIT
    )
    accepted = await asyncio.wait_for(blocker.read(), WAIT)
    blocker_id = accepted.accepted.job_id

    async def generate(prompt: str, seed: int) -> t2i_pb2.TextToImageResponse:
        request = t2i_pb2.TextToImageRequest(
            params=params(prompt=prompt, seed=seed, num_inference_steps=3)
        )
        return await stub.TextToImage(request, timeout=WAIT)

    calls = [
        asyncio.ensure_future(generate(prompt, seed))
        for prompt, seed in (("a red cat", 5), ("a blue house", 6), ("a green tree", 7))
    ]
    await asyncio.sleep(1.0)
    await stub.CancelJob(job_pb2.CancelJobRequest(job_id=blocker_id), timeout=WAIT)

    async def drain_blocker() -> None:
        while await blocker.read() is not grpc.aio.EOF:
            pass

    with pytest.raises(grpc.aio.AioRpcError):
        await asyncio.wait_for(drain_blocker(), WAIT)
    replies = await asyncio.wait_for(asyncio.gather(*calls), WAIT)
    assert [reply.result.usage.batch_size for reply in replies] == [3, 3, 3]
    # Each equals the same request served alone (nothing queued beside it).
    for reply, (prompt, seed) in zip(
        replies, (("a red cat", 5), ("a blue house", 6), ("a green tree", 7)), strict=True
    ):
        alone = await generate(prompt, seed)
        assert alone.result.usage.batch_size == 1
        _close(
            [pixels(image.data) for image in reply.result.images],
            [pixels(image.data) for image in alone.result.images],
        )
