"""Guidance scale and negative prompt at non-default values, through a real server: the images
equal the reference pipelines' own, byte for byte (Stable Diffusion's guidance_scale, Qwen-Image's
true_cfg_scale), and guidance <= 1 turns classifier-free guidance (and the negative prompt) off."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_asyncio
from diffusers import HunyuanDiTPipeline, QwenImagePipeline, StableDiffusionPipeline

from mmserve.t2i.v1 import t2i_pb2
from services.runtime.executor import JobContext
from services.t2i.config import T2ISettings
from services.t2i.engine import T2IEngine
from services.t2i.validation import GenerationRequest
from tests.t2i.helpers import PROMPT, generators, load_reference, params, png_bytes, served

ASYNC = pytest.mark.asyncio(loop_scope="module")

WAIT = 60
NEGATIVE = "blurry, washed out, low contrast"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sd(sd_dir):
    async with served(["--model", str(sd_dir)]) as connected:
        yield connected


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def qwen(qwen_dir):
    small = ["--default-width", "64", "--default-height", "64"]
    async with served(["--model", str(qwen_dir), *small]) as connected:
        yield connected


async def _served(stub: Any, seed: int, **fields: Any) -> bytes:
    reply = await stub.TextToImage(
        t2i_pb2.TextToImageRequest(params=params(seed=seed, num_inference_steps=3, **fields)),
        timeout=WAIT,
    )
    return reply.result.images[0].data


@pytest.mark.parametrize(
    ("guidance", "negative"),
    [(3.0, NEGATIVE), (12.5, ""), (12.5, NEGATIVE), (1.0, NEGATIVE), (0.0, "")],
)
@ASYNC
async def test_stable_diffusion_guidance_and_negative_prompt_equal_the_pipeline(
    sd, sd_dir, guidance: float, negative: str
) -> None:
    got = await _served(sd, 8, guidance_scale=guidance, negative_prompt=negative)
    reference = load_reference(sd_dir, StableDiffusionPipeline)
    expected = reference(
        PROMPT,
        negative_prompt=negative or None,
        guidance_scale=guidance,
        num_inference_steps=3,
        generator=generators(8, 1),
        height=64,
        width=64,
    ).images
    assert got == png_bytes(expected)[0]


@ASYNC
async def test_each_knob_changes_the_image_and_guidance_off_ignores_the_negative(sd) -> None:
    base = await _served(sd, 3, guidance_scale=3.0)
    assert await _served(sd, 3, guidance_scale=9.0) != base
    assert await _served(sd, 3, guidance_scale=3.0, negative_prompt=NEGATIVE) != base
    off = await _served(sd, 3, guidance_scale=1.0)
    assert await _served(sd, 3, guidance_scale=1.0, negative_prompt=NEGATIVE) == off


@pytest.mark.parametrize(("guidance", "negative"), [(2.5, NEGATIVE), (6.0, "dark"), (1.0, "")])
@ASYNC
async def test_qwen_image_true_cfg_and_negative_prompt_equal_the_pipeline(
    qwen, qwen_dir, guidance: float, negative: str
) -> None:
    got = await _served(qwen, 4, guidance_scale=guidance, negative_prompt=negative)
    reference = load_reference(qwen_dir, QwenImagePipeline)
    # The service passes true_cfg_scale, and the documented neutral " " as the negative prompt
    # when guidance is on and the request has none.
    blank = " " if guidance > 1 else None
    expected = reference(
        PROMPT,
        negative_prompt=negative or blank,
        true_cfg_scale=guidance,
        num_inference_steps=3,
        generator=generators(4, 1),
        height=64,
        width=64,
    ).images
    assert got == png_bytes(expected)[0]


def test_hunyuan_dit_guidance_and_negative_prompt_equal_the_pipeline(hunyuan_dir) -> None:
    # In-process through the engine (the request path is the one above): HunyuanDiT encodes
    # the negative prompt with both of its text encoders.
    engine = T2IEngine(
        T2ISettings(model=str(hunyuan_dir), default_width=64, default_height=64, warmup_steps=0)
    )
    engine.load()
    request = GenerationRequest(
        prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=2.5, steps=2, seed=6
    )
    output = engine.generate(JobContext("job", "text_to_image"), engine.plan(request))
    reference = load_reference(hunyuan_dir, HunyuanDiTPipeline)
    expected = reference(
        PROMPT,
        negative_prompt=NEGATIVE,
        guidance_scale=2.5,
        num_inference_steps=2,
        generator=generators(6, 1),
        height=64,
        width=64,
        use_resolution_binning=False,
    ).images
    assert png_bytes(output.images) == png_bytes(expected)
