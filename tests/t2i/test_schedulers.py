"""Schedulers per request, through a real server: each equals the in-process pipeline with that
scheduler built from the pipeline's config, the configured one comes back after a job that
chose another, and an unknown name is INVALID_ARGUMENT on params.scheduler."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import diffusers
import grpc
import pytest
import pytest_asyncio
from diffusers import AutoPipelineForImage2Image, StableDiffusionPipeline
from PIL import Image

from mmserve.common.v1 import media_pb2
from mmserve.t2i.v1 import t2i_pb2
from services.runtime.errors import Violations
from services.t2i.schedulers import Schedulers
from tests.support.rpc import field_violations
from tests.t2i.helpers import (
    PROMPT,
    generators,
    load_reference,
    params,
    png_bytes,
    served,
    solid_png,
)

ASYNC = pytest.mark.asyncio(loop_scope="module")
WAIT = 60
CHOSEN = ("EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "HeunDiscreteScheduler")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stub(sd_dir):
    async with served(["--model", str(sd_dir)]) as connected:
        yield connected


@pytest.fixture(scope="module")
def reference(sd_dir) -> Any:
    return load_reference(sd_dir, StableDiffusionPipeline)


@contextmanager
def scheduled(pipe: Any, name: str) -> Iterator[Any]:
    """`pipe` with scheduler `name`, as a diffusers user swaps it."""
    original = pipe.scheduler
    pipe.scheduler = getattr(diffusers, name).from_config(original.config)
    try:
        yield pipe
    finally:
        pipe.scheduler = original


def _t2i(scheduler: str, seed: int = 6) -> t2i_pb2.TextToImageRequest:
    return t2i_pb2.TextToImageRequest(
        params=params(seed=seed, num_inference_steps=3, scheduler=scheduler)
    )


def _expected(pipe: Any, seed: int = 6, **extra: Any) -> bytes:
    images = pipe(
        PROMPT, num_inference_steps=3, generator=generators(seed, 1), guidance_scale=7.5, **extra
    ).images
    return png_bytes(images)[0]


@ASYNC
async def test_model_info_lists_the_compatible_schedulers(stub, reference) -> None:
    reply = await stub.GetModelInfo(t2i_pb2.GetModelInfoRequest(), timeout=WAIT)
    assert reply.scheduler == "DDIMScheduler"
    names = list(reply.schedulers)
    assert names == sorted(names)
    assert {"DDIMScheduler", *CHOSEN} <= set(names)
    # Every listed one is a declared compatible of the model's scheduler.
    declared = {cls.__name__ for cls in reference.scheduler.compatibles}
    assert set(names) <= declared


@ASYNC
async def test_each_scheduler_equals_in_process_and_the_configured_one_returns(
    stub, reference
) -> None:
    served_images = {}
    for name in ("", *CHOSEN, "DDIMScheduler", ""):
        reply = await stub.TextToImage(_t2i(name), timeout=WAIT)
        served_images.setdefault(name, []).append(reply.result.images[0].data)
    base = _expected(reference, height=64, width=64)
    assert served_images[""] == [base, base]  # before and after the others
    assert served_images["DDIMScheduler"] == [base]  # naming the configured one is the same
    for name in CHOSEN:
        with scheduled(reference, name) as pipe:
            assert served_images[name] == [_expected(pipe, height=64, width=64)], name
    assert len({images[0] for images in served_images.values()}) == 1 + len(CHOSEN)


@ASYNC
async def test_image_to_image_takes_a_scheduler(stub, reference) -> None:
    source = solid_png((64, 64), (60, 60, 200))
    reply = await stub.ImageToImage(
        t2i_pb2.ImageToImageRequest(
            params=params(seed=2, num_inference_steps=4, scheduler="EulerDiscreteScheduler"),
            image=media_pb2.Image(data=source),
            strength=0.5,
        ),
        timeout=WAIT,
    )
    image_pipe = AutoPipelineForImage2Image.from_pipe(reference)
    image_pipe.set_progress_bar_config(disable=True)
    picture = Image.open(io.BytesIO(source)).convert("RGB")
    with scheduled(image_pipe, "EulerDiscreteScheduler") as pipe:
        expected = pipe(
            PROMPT,
            image=picture,
            strength=0.5,
            num_inference_steps=4,
            generator=generators(2, 1),
            guidance_scale=7.5,
        ).images
    assert [image.data for image in reply.result.images] == png_bytes(expected)


@ASYNC
@pytest.mark.parametrize("name", ["NoSuchScheduler", "FlowMatchEulerDiscreteScheduler"])
async def test_unknown_or_incompatible_scheduler_is_invalid_argument(stub, name: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.TextToImage(_t2i(name), timeout=WAIT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["params.scheduler"]
    assert name in (caught.value.details() or "")
    reply = await stub.TextToImage(_t2i("EulerDiscreteScheduler"), timeout=WAIT)
    assert reply.result.images


def test_schedulers_this_install_cannot_build_are_left_out(reference) -> None:
    schedulers = Schedulers(reference.scheduler)
    assert schedulers.default == "DDIMScheduler"
    for cls in reference.scheduler.compatibles:
        try:
            cls.from_config(reference.scheduler.config)
        except Exception:
            assert cls.__name__ not in schedulers.names
        else:
            assert cls.__name__ in schedulers.names
    problems = Violations()
    assert schedulers.check("", problems) == ""
    assert schedulers.check("DDIMScheduler", problems) == ""
    assert schedulers.check("EulerDiscreteScheduler", problems) == "EulerDiscreteScheduler"
    assert not problems
