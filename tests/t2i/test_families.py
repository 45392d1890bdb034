"""HunyuanDiT and Qwen-Image through the served RPCs: the same images as their own diffusers
pipelines in-process, image-to-image where the family has it, UNIMPLEMENTED where it does not."""

from __future__ import annotations

import io
from typing import Any

import grpc
import pytest
import pytest_asyncio
from diffusers import HunyuanDiTPipeline, QwenImageImg2ImgPipeline, QwenImagePipeline
from PIL import Image

from mmserve.common.v1 import media_pb2
from mmserve.t2i.v1 import t2i_pb2
from tests.t2i.helpers import (
    PROMPT,
    SMALL,
    generators,
    load_reference,
    params,
    png_bytes,
    served,
    solid_png,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

WAIT = 60


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hunyuan(hunyuan_dir):
    async with served(["--model", str(hunyuan_dir), *SMALL]) as stub:
        yield stub


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def qwen(qwen_dir):
    async with served(["--model", str(qwen_dir), *SMALL]) as stub:
        yield stub


async def test_hunyuan_dit_generates_what_its_pipeline_generates(hunyuan, hunyuan_dir) -> None:
    reply = await hunyuan.TextToImage(
        t2i_pb2.TextToImageRequest(params=params(seed=5, num_inference_steps=3, num_images=2)),
        timeout=WAIT,
    )
    reference = load_reference(hunyuan_dir, HunyuanDiTPipeline)
    expected = reference(
        PROMPT,
        num_inference_steps=3,
        num_images_per_prompt=2,
        generator=generators(5, 2),
        height=64,
        width=64,
        guidance_scale=5.0,  # the family's default
        use_resolution_binning=False,
    ).images
    assert [image.data for image in reply.result.images] == png_bytes(expected)
    assert (reply.result.seed, reply.result.steps) == (5, 3)


async def test_hunyuan_dit_has_no_image_to_image(hunyuan) -> None:
    request = t2i_pb2.ImageToImageRequest(
        params=params(), image=media_pb2.Image(data=solid_png((64, 64), (9, 9, 9)))
    )
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await hunyuan.ImageToImage(request, timeout=WAIT)
    assert unary.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        async for _ in hunyuan.StreamImageToImage(request, timeout=WAIT):
            pass
    assert streamed.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_hunyuan_dit_model_info(hunyuan) -> None:
    reply = await hunyuan.GetModelInfo(t2i_pb2.GetModelInfoRequest(), timeout=WAIT)
    assert (reply.model_info.family, reply.model_info.architecture) == (
        "hunyuan_dit",
        "HunyuanDiTPipeline",
    )
    assert "image_to_image" not in reply.model_info.capabilities
    limits = reply.limits
    assert (limits.size_multiple, limits.default_steps, limits.max_prompt_tokens) == (16, 50, 77)
    assert not limits.supports_image_to_image
    assert reply.scheduler == "DDPMScheduler"


async def test_hunyuan_dit_stream_previews(hunyuan) -> None:
    request = t2i_pb2.TextToImageRequest(
        params=params(seed=1, num_inference_steps=2),
        preview=t2i_pb2.PreviewOptions(every_n_steps=1, max_side=32),
    )
    events = [event async for event in hunyuan.StreamTextToImage(request, timeout=WAIT)]
    steps = [event.step for event in events if event.HasField("step")]
    assert [s.progress.step for s in steps] == [1, 2]
    assert all(s.preview.data.startswith(b"\x89PNG") for s in steps)
    assert events[-1].WhichOneof("event") == "result"


def _qwen_cfg() -> dict[str, Any]:
    # Qwen-Image's true CFG at the family default 4.0 runs only with a negative prompt; the
    # service sends the pipeline's documented neutral " " when the client sends none.
    return {"true_cfg_scale": 4.0, "negative_prompt": " "}


async def test_qwen_image_generates_what_its_pipeline_generates(qwen, qwen_dir) -> None:
    reply = await qwen.TextToImage(
        t2i_pb2.TextToImageRequest(params=params(seed=9, num_inference_steps=3)), timeout=WAIT
    )
    reference = load_reference(qwen_dir, QwenImagePipeline)
    expected = reference(
        PROMPT,
        num_inference_steps=3,
        generator=generators(9, 1),
        height=64,
        width=64,
        **_qwen_cfg(),
    ).images
    assert [image.data for image in reply.result.images] == png_bytes(expected)

    source = solid_png((64, 64), (30, 160, 90))
    image_pipe = QwenImageImg2ImgPipeline.from_pipe(reference)
    image_pipe.set_progress_bar_config(disable=True)
    for strength in (0.5, 1.0):
        edited = await qwen.ImageToImage(
            t2i_pb2.ImageToImageRequest(
                params=params(seed=4, num_inference_steps=4),
                image=media_pb2.Image(data=source),
                strength=strength,
            ),
            timeout=WAIT,
        )
        expected_edit = image_pipe(
            PROMPT,
            image=Image.open(io.BytesIO(source)).convert("RGB"),
            strength=strength,
            num_inference_steps=4,
            generator=generators(4, 1),
            height=64,
            width=64,
            **_qwen_cfg(),
        ).images
        assert [image.data for image in edited.result.images] == png_bytes(expected_edit)
        assert edited.result.steps == int(4 * strength)


async def test_qwen_image_model_info_and_negative_prompt(qwen) -> None:
    reply = await qwen.GetModelInfo(t2i_pb2.GetModelInfoRequest(), timeout=WAIT)
    assert reply.model_info.family == "qwen_image"
    limits = reply.limits
    assert (limits.size_multiple, limits.max_prompt_tokens) == (16, 512)
    assert limits.supports_image_to_image
    assert limits.supports_negative_prompt
    assert reply.scheduler == "FlowMatchEulerDiscreteScheduler"
    with_negative = await qwen.TextToImage(
        t2i_pb2.TextToImageRequest(
            params=params(seed=1, num_inference_steps=2, negative_prompt="blurry")
        ),
        timeout=WAIT,
    )
    without = await qwen.TextToImage(
        t2i_pb2.TextToImageRequest(params=params(seed=1, num_inference_steps=2)), timeout=WAIT
    )
    assert with_negative.result.images[0].data != without.result.images[0].data
