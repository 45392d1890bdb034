"""Denoising batches on the tiny Stable Diffusion: rows of one batch against their solo runs,
in the engine and through a served TextToImage, and a cancelled row."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import torch

from mmserve.common.v1 import job_pb2
from mmserve.t2i.v1 import t2i_pb2
from services.runtime.errors import JobCancelled
from services.runtime.executor import JobContext
from services.t2i.batching import RowGuidance, batch_key
from services.t2i.config import T2ISettings
from services.t2i.engine import PreviewFrame, T2IEngine
from services.t2i.validation import GenerationRequest
from tests.t2i.helpers import close_images, params, pixels, served

WAIT = 120.0


@pytest.fixture(scope="module")
def engine(sd_dir: Path) -> T2IEngine:
    loaded = T2IEngine(T2ISettings(model=str(sd_dir), warmup_steps=0))
    loaded.load()
    return loaded


def _plan(engine: T2IEngine, **fields: Any) -> Any:
    fields.setdefault("steps", 3)
    return engine.plan(GenerationRequest(**fields))


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


def test_with_row_guidance_only_guidance_on_or_off_splits(engine: T2IEngine) -> None:
    assert engine.row_guidance  # Stable Diffusion guides over image rows
    base = _plan(engine, prompt="a cat", seed=1, guidance_scale=7.5)
    assert batch_key(base, True) == batch_key(replace(base, guidance_scale=2.0), True)
    assert batch_key(base, True) != batch_key(replace(base, guidance_scale=1.0), True)
    assert batch_key(replace(base, guidance_scale=0.5), True) == batch_key(
        replace(base, guidance_scale=1.0), True
    )
    assert batch_key(base, True) != batch_key(replace(base, steps=4), True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_row_guidance_scales_each_row_as_a_float_scale_would(dtype: torch.dtype) -> None:
    difference = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    scales = [7.5, 2.0, 11.3]
    guidance = RowGuidance(scales)
    assert guidance > 1
    assert float(guidance) == 11.3
    for scaled in (guidance * difference, difference * guidance):
        assert scaled.dtype == dtype
        assert scaled.shape == difference.shape
        for row, scale in enumerate(scales):
            assert torch.equal(scaled[row], (scale * difference[row : row + 1])[0])
    assert guidance * 2 == 22.6
    with pytest.raises(RuntimeError, match="per-row guidance"):
        _ = guidance * torch.ones(6, 4)  # a pipeline using it on other rows fails loudly
    # Qwen-Image's packed latents (batch, tokens, channels) broadcast the same way.
    packed = torch.ones(3, 5, 16)
    assert torch.equal((guidance * packed)[:, 0, 0], torch.tensor(scales))


def test_rows_of_a_batch_equal_their_solo_runs(engine: T2IEngine) -> None:
    # Each row with its own guidance scale too.
    plans = [
        _plan(engine, prompt="a red cat", seed=3, guidance_scale=3.0),
        _plan(engine, prompt="a blue house", negative_prompt="fog", seed=11, num_images=2),
        _plan(engine, prompt="a green tree", seed=2**64 - 1, guidance_scale=12.0),
    ]
    assert len({batch_key(plan, engine.row_guidance) for plan in plans}) == 1
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
        close_images(output.images, solo.images)
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
    close_images(outputs[1].images, engine.generate(JobContext("solo", "t"), plans[1]).images)


@pytest.mark.parametrize(
    "scheduler",
    # The configured PNDM keeps earlier steps' outputs (`ets`); Euler ancestral draws fresh
    # noise from each image's generator every step; DPM-Solver++ keeps `model_outputs`.
    ["", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler"],
)
def test_a_cancelled_row_leaves_the_batch_at_the_next_step(
    engine: T2IEngine, scheduler: str
) -> None:
    assert scheduler in ("", *engine.scheduler_names)
    plans = [
        _plan(engine, prompt="a cat", seed=1, guidance_scale=3.0, steps=5),
        _plan(engine, prompt="a dog", seed=2, num_images=2, guidance_scale=9.0, steps=5),
        _plan(engine, prompt="a fox", seed=3, guidance_scale=12.0, steps=5),
    ]
    plans = [replace(plan, scheduler=scheduler, preview_every=1) for plan in plans]
    frames: list[PreviewFrame] = []
    contexts = [
        JobContext("job-0", "text_to_image"),
        JobContext("job-1", "text_to_image"),
        JobContext("job-2", "text_to_image", on_output=frames.append),
    ]

    def cancel_the_dog(step: int, total: int, extra: dict[str, Any]) -> None:
        if step == 2:
            contexts[1].cancel.cancel(JobCancelled("cancelled by client"))

    contexts[0] = JobContext("job-0", "text_to_image", on_progress=cancel_the_dog)
    unet = engine.pipelines.text_to_image.unet
    batch_sizes: list[int] = []
    hook = unet.register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))
    try:
        outputs = engine.generate_batch(contexts, plans)
    finally:
        hook.remove()
    # Two denoiser passes (guided) per image: 4 images, then 2 from the third step on.
    assert batch_sizes == [8, 8, 4, 4, 4]
    assert isinstance(outputs[1], JobCancelled)
    for index in (0, 2):
        output = outputs[index]
        assert not isinstance(output, Exception)
        assert output.steps == 5
        close_images(output.images, engine.generate(JobContext("solo", "t"), plans[index]).images)
    # The fox's previews follow its own rows before and after the cut.
    solo_frames: list[PreviewFrame] = []
    engine.generate(JobContext("solo", "t", on_output=solo_frames.append), plans[2])
    assert [frame.step for frame in frames] == [1, 2, 3, 4, 5]
    for got, expected in zip(frames, solo_frames, strict=True):
        close_images([got.rgb], [expected.rgb])


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
        close_images(
            [pixels(image.data) for image in reply.result.images],
            [pixels(image.data) for image in alone.result.images],
        )


def test_row_guidance_refuses_other_tensor_uses() -> None:
    guidance = RowGuidance([2.0, 3.0])
    with pytest.raises(RuntimeError, match="per-row guidance"):
        _ = torch.ones(2) + guidance
    assert guidance - 1 == 2.0  # plain arithmetic is the float's


def test_qwen_image_rows_keep_their_own_true_cfg_scale(qwen_dir: Path) -> None:
    qwen = T2IEngine(T2ISettings(model=str(qwen_dir), warmup_steps=0))
    qwen.load()
    assert qwen.row_guidance  # true_cfg_scale mixes two passes per image row
    # Qwen-Image rescales the guided prediction to the conditional one's norm, so the tiny
    # model's pixels move little with the scale: far-apart scales (solo runs at 1.5 and 25
    # differ by 6-7 levels) keep a shared scale from passing for per-row ones.
    plans = [
        _plan(qwen, prompt="a green tree", seed=3, guidance_scale=1.5, width=64, height=64),
        _plan(qwen, prompt="a green tree", seed=3, guidance_scale=25.0, width=64, height=64),
    ]
    plans = [replace(plan, negative_prompt="a red car") for plan in plans]
    assert batch_key(plans[0], True) == batch_key(plans[1], True)
    contexts = [JobContext(f"job-{i}", "text_to_image") for i in range(2)]
    outputs = qwen.generate_batch(contexts, plans)
    for plan, output in zip(plans, outputs, strict=True):
        assert not isinstance(output, Exception)
        close_images(output.images, qwen.generate(JobContext("solo", "text_to_image"), plan).images)
