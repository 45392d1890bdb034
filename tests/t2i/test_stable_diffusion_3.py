"""Stable Diffusion 3 (the tiny built-in): served images equal its own diffusers pipeline's,
rows of a denoising batch (each with its own guidance scale and negative prompt) equal their
solo runs, and a cancelled row leaves the running batch (SD3's loop takes its prompt and pooled
embeddings back from the step-end callback)."""

from __future__ import annotations

from pathlib import Path

import pytest
from diffusers import StableDiffusion3Pipeline

from mmserve.t2i.v1 import t2i_pb2
from services.t2i.batching import batch_key
from services.t2i.engine import T2IEngine
from tests.t2i.helpers import (
    PROMPT,
    SMALL,
    batch_cancelling_row_one_at_step_two,
    batch_equals_solo_runs,
    generators,
    load_reference,
    params,
    plan_for,
    png_bytes,
    served,
    small_engine,
)

WAIT = 60


@pytest.fixture(scope="module")
def engine(sd3_dir: Path) -> T2IEngine:
    return small_engine(sd3_dir)


@pytest.mark.asyncio
async def test_served_images_are_what_the_sd3_pipeline_makes(sd3_dir: Path) -> None:
    async with served(["--model", str(sd3_dir), *SMALL]) as stub:
        reply = await stub.TextToImage(
            t2i_pb2.TextToImageRequest(
                params=params(seed=7, num_inference_steps=3, num_images=2, negative_prompt="fog")
            ),
            timeout=WAIT,
        )
        info = await stub.GetModelInfo(t2i_pb2.GetModelInfoRequest(), timeout=WAIT)
    assert info.model_info.family == "stable_diffusion_3"
    reference = load_reference(sd3_dir, StableDiffusion3Pipeline)
    expected = reference(
        PROMPT,
        negative_prompt="fog",
        num_inference_steps=3,
        num_images_per_prompt=2,
        generator=generators(7, 2),
        height=64,
        width=64,
        guidance_scale=7.0,  # the family's default
        max_sequence_length=256,  # the family's T5 limit
    ).images
    assert [image.data for image in reply.result.images] == png_bytes(expected)
    assert (reply.result.seed, reply.result.steps) == (7, 3)


def test_rows_of_an_sd3_batch_equal_their_solo_runs(engine: T2IEngine) -> None:
    assert engine.row_guidance
    assert not engine.empty_negative_zeroed
    plans = [
        plan_for(engine, prompt="a red cat", seed=3, guidance_scale=3.0, negative_prompt="fog"),
        plan_for(engine, prompt="a blue house", seed=11, num_images=2),
        plan_for(
            engine, prompt="a green tree", seed=5, guidance_scale=12.0, negative_prompt="rain"
        ),
    ]
    keys = {batch_key(plan, engine.row_guidance, engine.empty_negative_zeroed) for plan in plans}
    assert len(keys) == 1
    batch_equals_solo_runs(engine, plans)


def test_a_cancelled_sd3_row_leaves_the_batch_at_the_next_step(engine: T2IEngine) -> None:
    plans = [
        plan_for(engine, prompt="a cat", seed=1, guidance_scale=3.0, steps=5),
        plan_for(engine, prompt="a dog", seed=2, num_images=2, guidance_scale=9.0, steps=5),
        plan_for(engine, prompt="a fox", negative_prompt="rain", seed=3, steps=5),
    ]
    calls, _ = batch_cancelling_row_one_at_step_two(
        engine,
        plans,
        engine.pipelines.text_to_image.transformer,
        lambda args, kwargs: tuple(
            kwargs[name].shape[0]
            for name in ("hidden_states", "encoder_hidden_states", "pooled_projections")
        ),
    )
    # Two denoiser passes (guided) per image, every per-row input cut with the latents:
    # 4 images, then 2 from the third step on.
    assert calls == [(8, 8, 8)] * 2 + [(4, 4, 4)] * 3
