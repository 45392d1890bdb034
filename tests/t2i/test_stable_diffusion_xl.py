"""Stable Diffusion XL (the tiny built-in): served images equal its own diffusers pipeline's,
rows of a denoising batch equal their solo runs (requests without a negative prompt, which SDXL
guides against zeros, never share a batch with requests that have one), and a cancelled row
leaves the running batch (SDXL's loop takes its pooled text embeddings and time ids back from
the step-end callback)."""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    StableDiffusionXLPipeline,
)
from PIL import Image

from mmserve.common.v1 import job_pb2, media_pb2
from mmserve.t2i.v1 import t2i_pb2
from services.runtime.errors import JobCancelled
from services.runtime.executor import JobContext
from services.t2i.batching import batch_key
from services.t2i.engine import T2IEngine
from tests.t2i.helpers import (
    PROMPT,
    SMALL,
    batch_cancelling_row_one_at_step_two,
    batch_equals_solo_runs,
    close_images,
    generators,
    load_reference,
    params,
    pixels,
    plan_for,
    png_bytes,
    served,
    small_engine,
    solid_png,
)

WAIT = 60


@pytest.fixture(scope="module")
def engine(sdxl_dir: Path) -> T2IEngine:
    return small_engine(sdxl_dir)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stub(sdxl_dir: Path) -> Any:
    async with served(["--model", str(sdxl_dir), *SMALL, "--max-batch-size", "4"]) as connected:
        yield connected


@pytest.fixture(scope="module")
def reference(sdxl_dir: Path) -> Any:
    return load_reference(sdxl_dir, StableDiffusionXLPipeline)


@pytest.mark.asyncio(loop_scope="module")
async def test_served_images_are_what_the_sdxl_pipeline_makes(stub: Any, reference: Any) -> None:
    reply = await stub.TextToImage(
        t2i_pb2.TextToImageRequest(params=params(seed=7, num_inference_steps=3, num_images=2)),
        timeout=WAIT,
    )
    info = await stub.GetModelInfo(t2i_pb2.GetModelInfoRequest(), timeout=WAIT)
    assert info.model_info.family == "stable_diffusion_xl"
    expected = reference(
        PROMPT,
        num_inference_steps=3,
        num_images_per_prompt=2,
        generator=generators(7, 2),
        height=64,
        width=64,
        guidance_scale=5.0,  # the family's default
    ).images
    assert [image.data for image in reply.result.images] == png_bytes(expected)
    assert (reply.result.seed, reply.result.steps) == (7, 3)


@pytest.mark.asyncio(loop_scope="module")
async def test_sdxl_image_to_image_and_inpainting_are_what_their_pipelines_make(
    stub: Any, reference: Any
) -> None:
    source = solid_png((64, 64), (200, 40, 40))
    mask = solid_png((64, 64), (255, 255, 255))
    image = Image.open(io.BytesIO(source)).convert("RGB")
    reply = await stub.ImageToImage(
        t2i_pb2.ImageToImageRequest(
            params=params(seed=3, num_inference_steps=4),
            image=media_pb2.Image(data=source),
            strength=0.5,
        ),
        timeout=WAIT,
    )
    image_pipe = AutoPipelineForImage2Image.from_pipe(reference)
    image_pipe.set_progress_bar_config(disable=True)
    expected = image_pipe(
        PROMPT,
        image=image,
        strength=0.5,
        num_inference_steps=4,
        generator=generators(3, 1),
        guidance_scale=5.0,
    ).images
    assert reply.result.steps == 2
    assert [image.data for image in reply.result.images] == png_bytes(expected)

    painted = await stub.InpaintImage(
        t2i_pb2.InpaintImageRequest(
            params=params(seed=4, num_inference_steps=4),
            image=media_pb2.Image(data=source),
            mask=media_pb2.Image(data=mask),
        ),
        timeout=WAIT,
    )
    inpaint_pipe = AutoPipelineForInpainting.from_pipe(reference)
    inpaint_pipe.set_progress_bar_config(disable=True)
    expected = inpaint_pipe(
        PROMPT,
        image=image,
        mask_image=Image.open(io.BytesIO(mask)).convert("L"),
        strength=1.0,  # the service's default
        num_inference_steps=4,
        generator=generators(4, 1),
        height=64,
        width=64,
        guidance_scale=5.0,
    ).images
    assert [image.data for image in painted.result.images] == png_bytes(expected)


def test_rows_with_and_without_a_negative_prompt_batch_apart(engine: T2IEngine) -> None:
    assert engine.empty_negative_zeroed
    plain = plan_for(engine, prompt="a cat", seed=1)
    key = batch_key(plain, engine.row_guidance, engine.empty_negative_zeroed)
    assert key == batch_key(
        replace(plain, prompt="a dog", guidance_scale=9.0),
        engine.row_guidance,
        engine.empty_negative_zeroed,
    )
    negative = replace(plain, negative_prompt="fog")
    assert key != batch_key(negative, engine.row_guidance, engine.empty_negative_zeroed)
    assert batch_key(negative, engine.row_guidance, True) == batch_key(
        replace(negative, negative_prompt="rain"), engine.row_guidance, True
    )


@pytest.mark.parametrize("negatives", [("", "", ""), ("fog", "rain", "blur")])
def test_rows_of_an_sdxl_batch_equal_their_solo_runs(
    engine: T2IEngine, negatives: tuple[str, str, str]
) -> None:
    plans = [
        plan_for(engine, prompt="a red cat", seed=3, guidance_scale=3.0),
        plan_for(engine, prompt="a blue house", seed=11, num_images=2),
        plan_for(engine, prompt="a green tree", seed=5, guidance_scale=9.0),
    ]
    plans = [replace(plan, negative_prompt=n) for plan, n in zip(plans, negatives, strict=True)]
    keys = {batch_key(plan, engine.row_guidance, engine.empty_negative_zeroed) for plan in plans}
    assert len(keys) == 1
    batch_equals_solo_runs(engine, plans)


async def _drain(stream: Any) -> None:
    while await stream.read() is not grpc.aio.EOF:
        pass


@pytest.mark.asyncio(loop_scope="module")
async def test_queued_sdxl_requests_equal_their_solo_runs(stub: Any) -> None:
    requests = [("a red cat", "", 5), ("a blue house", "fog", 6), ("a green tree", "", 7)]
    # A long job holds the device, so the next three queue together behind it.
    blocker = stub.StreamTextToImage(
        t2i_pb2.TextToImageRequest(
            params=params(seed=1, num_inference_steps=150, width=128, height=128)
        ),
        timeout=WAIT,
    )
    accepted = await asyncio.wait_for(blocker.read(), WAIT)

    async def generate(prompt: str, negative: str, seed: int) -> t2i_pb2.TextToImageResponse:
        request = t2i_pb2.TextToImageRequest(
            params=params(prompt=prompt, negative_prompt=negative, seed=seed, num_inference_steps=3)
        )
        return await stub.TextToImage(request, timeout=WAIT)

    calls = [asyncio.ensure_future(generate(*request)) for request in requests]
    await asyncio.sleep(1.0)
    await stub.CancelJob(job_pb2.CancelJobRequest(job_id=accepted.accepted.job_id))
    with pytest.raises(grpc.aio.AioRpcError):
        await asyncio.wait_for(_drain(blocker), WAIT)
    replies = await asyncio.wait_for(asyncio.gather(*calls), WAIT)
    # The two without a negative prompt share a batch; the one with it runs apart.
    assert [reply.result.usage.batch_size for reply in replies] == [2, 1, 2]
    for reply, request in zip(replies, requests, strict=True):
        alone = await generate(*request)
        assert alone.result.usage.batch_size == 1
        close_images(
            [pixels(image.data) for image in reply.result.images],
            [pixels(image.data) for image in alone.result.images],
        )


def test_a_cancelled_sdxl_row_leaves_the_batch_at_the_next_step(engine: T2IEngine) -> None:
    plans = [
        plan_for(engine, prompt="a cat", seed=1, guidance_scale=3.0, steps=5),
        plan_for(engine, prompt="a dog", seed=2, num_images=2, guidance_scale=9.0, steps=5),
        plan_for(engine, prompt="a fox", seed=3, guidance_scale=12.0, steps=5),
    ]
    calls, _ = batch_cancelling_row_one_at_step_two(
        engine,
        plans,
        engine.pipelines.text_to_image.unet,
        lambda args, kwargs: (
            args[0].shape[0],
            kwargs["added_cond_kwargs"]["text_embeds"].shape[0],
            kwargs["added_cond_kwargs"]["time_ids"].shape[0],
        ),
    )
    # Two denoiser passes (guided) per image, every per-row input cut with the latents:
    # 4 images, then 2 from the third step on.
    assert calls == [(8, 8, 8)] * 2 + [(4, 4, 4)] * 3


def test_a_row_cancelled_at_the_first_step_fails_alone(engine: T2IEngine) -> None:
    plans = [plan_for(engine, prompt="a cat", seed=1), plan_for(engine, prompt="a dog", seed=2)]
    contexts = [JobContext("job-0", "text_to_image"), JobContext("job-1", "text_to_image")]
    contexts[1] = JobContext(
        "job-1",
        "text_to_image",
        on_progress=lambda *args: contexts[0].cancel.cancel(JobCancelled("gone")),
    )
    outputs = engine.generate_batch(contexts, plans)
    assert isinstance(outputs[0], JobCancelled)
    assert not isinstance(outputs[1], Exception)
    close_images(outputs[1].images, engine.generate(JobContext("solo", "t"), plans[1]).images)
