"""FLUX.1 (the tiny built-in): served images equal its own diffusers pipeline's at the family's
default (embedded) guidance, the model info says it takes no negative prompt (one sent changes
nothing), and rows of a denoising batch equal their solo runs (the batch shares one guidance
value, as the transformer embeds it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from diffusers import FluxPipeline

from mmserve.t2i.v1 import t2i_pb2
from services.runtime.executor import JobContext
from services.t2i.batching import batch_key
from services.t2i.engine import T2IEngine
from tests.t2i.helpers import (
    PROMPT,
    SMALL,
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
def engine(flux_dir: Path) -> T2IEngine:
    return small_engine(flux_dir)


@pytest.mark.asyncio
async def test_served_images_are_what_the_flux_pipeline_makes(flux_dir: Path) -> None:
    async with served(["--model", str(flux_dir), *SMALL]) as stub:
        reply = await stub.TextToImage(
            t2i_pb2.TextToImageRequest(params=params(seed=7, num_inference_steps=3, num_images=2)),
            timeout=WAIT,
        )
        info = await stub.GetModelInfo(t2i_pb2.GetModelInfoRequest(), timeout=WAIT)
        with_negative = await stub.TextToImage(
            t2i_pb2.TextToImageRequest(
                params=params(seed=7, num_inference_steps=3, num_images=2, negative_prompt="fog")
            ),
            timeout=WAIT,
        )
    assert info.model_info.family == "flux"
    assert "negative_prompt" not in info.model_info.capabilities
    assert with_negative.result.images == reply.result.images
    reference = load_reference(flux_dir, FluxPipeline)
    expected = reference(
        PROMPT,
        num_inference_steps=3,
        num_images_per_prompt=2,
        generator=generators(7, 2),
        height=64,
        width=64,
        guidance_scale=3.5,  # the family's default
        max_sequence_length=512,  # the family's T5 limit
    ).images
    assert [image.data for image in reply.result.images] == png_bytes(expected)
    assert (reply.result.seed, reply.result.steps) == (7, 3)


def test_rows_of_a_flux_batch_equal_their_solo_runs(engine: T2IEngine) -> None:
    # The transformer embeds the guidance value: one per batch, never a row's own.
    assert not engine.row_guidance
    plans = [
        plan_for(engine, prompt="a red cat", seed=3),
        plan_for(engine, prompt="a blue house", seed=11, num_images=2),
        plan_for(engine, prompt="a green tree", seed=5),
    ]
    keys = {batch_key(plan, engine.row_guidance, engine.empty_negative_zeroed) for plan in plans}
    assert len(keys) == 1
    other = plan_for(engine, prompt="a fox", seed=1, guidance_scale=5.0)
    assert batch_key(other, engine.row_guidance, engine.empty_negative_zeroed) not in keys
    batch_equals_solo_runs(engine, plans)
    solo = engine.generate(JobContext("solo", "t"), other)
    assert len(solo.images) == 1
