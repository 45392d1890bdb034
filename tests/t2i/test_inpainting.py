"""InpaintImage and StreamInpaintImage with the tiny Stable Diffusion pipeline: the same images
as diffusers' inpainting pipeline in-process, streams with previews, cancellation, mask checks
with field violations, and FAILED_PRECONDITION for a family without inpainting (HunyuanDiT)."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import grpc
import pytest
import pytest_asyncio
from diffusers import AutoPipelineForInpainting, StableDiffusionPipeline
from PIL import Image

from mmserve.common.v1 import job_pb2, media_pb2
from mmserve.t2i.v1 import t2i_pb2
from services.runtime.images import encode_image
from tests.support.rpc import field_violations
from tests.t2i.helpers import (
    PROMPT,
    generators,
    job_id_at_step_two,
    load_reference,
    params,
    png_bytes,
    served,
    solid_png,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

WAIT = 60
LONG = 999  # steps of a job that only ends by being cancelled
LONG_SIZE = 128


def mask_png(
    size: tuple[int, int], box: tuple[int, int, int, int] | None, fill: int = 255
) -> bytes:
    """A black mask with `box` (left, top, right, bottom) at `fill`; None: all `fill`."""
    mask = Image.new("L", size, 0 if box is not None else fill)
    if box is not None:
        mask.paste(fill, box)
    return encode_image(mask, "PNG")


async def complete(call: Any) -> None:
    """Awaits a unary call, or reads a stream to its end (raising its status)."""
    if isinstance(call, grpc.aio.UnaryStreamCall):
        async for _ in call:
            pass
    else:
        await call


SOURCE = solid_png((64, 64), (200, 40, 40))
MASK = mask_png((64, 64), (16, 16, 48, 48))


def inpaint(
    image: bytes | None = SOURCE, mask: bytes | None = MASK, **fields: Any
) -> t2i_pb2.InpaintImageRequest:
    request = t2i_pb2.InpaintImageRequest(params=params(num_inference_steps=4))
    if image is not None:
        request.image.data = image
    if mask is not None:
        request.mask.data = mask
    if "strength" in fields:
        request.strength = fields.pop("strength")
    if "preview" in fields:
        request.preview.CopyFrom(fields.pop("preview"))
    request.params.MergeFrom(params(**fields))
    return request


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stub(sd_dir):
    async with served(["--model", str(sd_dir), "--max-steps", str(LONG)]) as connected:
        yield connected


@pytest.fixture(scope="module")
def reference(sd_dir) -> Any:
    pipe = AutoPipelineForInpainting.from_pipe(load_reference(sd_dir, StableDiffusionPipeline))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _decoded(data: bytes, mode: str) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert(mode)


async def test_inpainting_equals_in_process_pipeline(stub, reference) -> None:
    outputs = {}
    for strength in (None, 0.5):
        request = inpaint(seed=3, num_images=2)
        if strength is not None:
            request.strength = strength
        reply = await stub.InpaintImage(request, timeout=WAIT)
        expected = reference(
            PROMPT,
            image=_decoded(SOURCE, "RGB"),
            mask_image=_decoded(MASK, "L"),
            strength=1.0 if strength is None else strength,  # the service's default is 1
            num_inference_steps=4,
            num_images_per_prompt=2,
            generator=generators(3, 2),
            height=64,
            width=64,
            guidance_scale=7.5,
        ).images
        result = reply.result
        assert [image.data for image in result.images] == png_bytes(expected)
        assert result.steps == int(4 * (strength or 1.0))
        assert (result.seed, len(result.images)) == (3, 2)
        outputs[strength] = result.images[0].data
    assert outputs[None] != outputs[0.5]


async def test_the_mask_decides_what_is_repainted(stub) -> None:
    outputs = set()
    for box in ((16, 16, 48, 48), (0, 0, 32, 64), None):
        reply = await stub.InpaintImage(inpaint(mask=mask_png((64, 64), box), seed=1), timeout=WAIT)
        outputs.add(reply.result.images[0].data)
    assert len(outputs) == 3


async def test_all_white_mask_repaints_everything_and_a_colour_mask_is_read_as_grey(
    stub, reference
) -> None:
    white = mask_png((64, 64), None)
    reply = await stub.InpaintImage(inpaint(mask=white, seed=5), timeout=WAIT)
    assert reply.result.steps == 4
    # A colour mask: its luminance decides, exactly like the same mask in greyscale.
    colour = Image.new("RGB", (64, 64), (0, 0, 0))
    colour.paste((255, 255, 255), (8, 8, 40, 40))
    grey = colour.convert("L")
    replies = [
        await stub.InpaintImage(inpaint(mask=encode_image(m, "PNG"), seed=5), timeout=WAIT)
        for m in (colour, grey)
    ]
    assert replies[0].result.images[0].data == replies[1].result.images[0].data


async def test_transparent_mask_pixels_are_repainted(stub) -> None:
    # Like every input image, the mask's transparency is composited on white.
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    clear.paste((0, 0, 0, 0), (16, 16, 48, 48))
    replies = [
        await stub.InpaintImage(inpaint(mask=data, seed=2), timeout=WAIT)
        for data in (encode_image(clear, "PNG"), MASK)
    ]
    assert replies[0].result.images[0].data == replies[1].result.images[0].data


async def test_size_defaults_to_the_input_and_the_mask_follows(stub) -> None:
    image = solid_png((96, 64), (10, 200, 10))
    mask = mask_png((96, 64), (0, 0, 48, 64))
    reply = await stub.InpaintImage(
        inpaint(image=image, mask=mask, seed=1, num_inference_steps=2), timeout=WAIT
    )
    out = reply.result.images[0]
    assert (out.width, out.height) == (96, 64)
    resized = await stub.InpaintImage(
        inpaint(image=image, mask=mask, seed=1, num_inference_steps=2, width=64, height=64),
        timeout=WAIT,
    )
    assert (resized.result.images[0].width, resized.result.images[0].height) == (64, 64)


async def test_stream_has_steps_previews_and_the_unary_result(stub) -> None:
    request = inpaint(seed=2, preview=t2i_pb2.PreviewOptions(every_n_steps=2, max_side=32))
    events = [event async for event in stub.StreamInpaintImage(request, timeout=WAIT)]
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[0] == "accepted"
    assert kinds[-1] == "result"
    assert {event.job_id for event in events} == {events[0].accepted.job_id}
    steps = [event.step for event in events if event.HasField("step")]
    assert [s.progress.step for s in steps if s.HasField("preview")] == [2, 4]
    assert all(s.progress.total_steps == 4 for s in steps)
    preview = next(s.preview for s in steps if s.HasField("preview"))
    assert preview.format == media_pb2.IMAGE_FORMAT_PNG
    assert max(_decoded(preview.data, "RGB").size) == 32
    unary = await stub.InpaintImage(inpaint(seed=2), timeout=WAIT)
    assert events[-1].result.images[0].data == unary.result.images[0].data


async def test_cancel_stops_an_inpainting_job_and_the_next_runs(stub) -> None:
    big = solid_png((LONG_SIZE, LONG_SIZE), (1, 2, 3))
    long_stream = stub.StreamInpaintImage(
        inpaint(
            image=big,
            mask=mask_png((LONG_SIZE, LONG_SIZE), None),
            seed=1,
            num_inference_steps=LONG,
        ),
        timeout=WAIT * 5,
    )

    job_id = await asyncio.wait_for(job_id_at_step_two(long_stream), WAIT)
    cancelled = await stub.CancelJob(job_pb2.CancelJobRequest(job_id=job_id), timeout=WAIT)
    assert cancelled.job.state == job_pb2.JOB_STATE_CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(long_stream.read(), WAIT)
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    job = (await stub.GetJob(job_pb2.GetJobRequest(job_id=job_id), timeout=WAIT)).job
    assert job.kind == "inpainting"
    assert job.progress.step < LONG
    reply = await stub.InpaintImage(inpaint(seed=1, num_inference_steps=1), timeout=WAIT)
    assert reply.result.steps == 1


_OTHER = solid_png((48, 64), (1, 2, 3))
INVALID: list[tuple[str, t2i_pb2.InpaintImageRequest, set[str]]] = [
    ("no mask", inpaint(mask=None), {"mask"}),
    ("no image", inpaint(image=None), {"image"}),
    ("neither", inpaint(image=None, mask=None), {"image", "mask"}),
    ("mask not an image", inpaint(mask=b"not an image"), {"mask.data"}),
    ("image not an image", inpaint(image=b"not an image"), {"image.data"}),
    ("mask of another size", inpaint(mask=mask_png((48, 64), None)), {"mask"}),
    ("all-black mask", inpaint(mask=mask_png((64, 64), (0, 0, 8, 8), fill=127)), {"mask"}),
    ("strength zero", inpaint(strength=0.0), {"strength"}),
    ("strength above one", inpaint(strength=1.5), {"strength"}),
    (
        "request and mask problems together",
        inpaint(mask=mask_png((64, 64), None, fill=0), width=100, output_quality=0),
        {"mask", "params.width", "params.output_quality"},
    ),
    ("mask and image undecodable", inpaint(image=b"x", mask=b"y"), {"image.data", "mask.data"}),
]


@pytest.mark.parametrize(
    ("request_", "fields"),
    [(r, f) for _, r, f in INVALID],
    ids=[name for name, _, _ in INVALID],
)
async def test_invalid_inpainting_names_the_fields(stub, request_, fields: set[str]) -> None:
    for call in (stub.InpaintImage, stub.StreamInpaintImage):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await complete(call(request_, timeout=WAIT))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(field_violations(caught.value)) == fields


async def test_model_info_says_inpainting_yes_and_edits_no(stub) -> None:
    reply = await stub.GetModelInfo(t2i_pb2.GetModelInfoRequest(), timeout=WAIT)
    assert reply.limits.supports_inpainting
    assert not reply.limits.supports_image_editing
    assert "inpainting" in reply.model_info.capabilities
    assert "image_editing" not in reply.model_info.capabilities
    edit = t2i_pb2.EditImageRequest(params=params(), image=media_pb2.Image(data=SOURCE))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.EditImage(edit, timeout=WAIT)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Qwen-Image-Edit" in (caught.value.details() or "")


async def test_a_family_without_inpainting_is_a_failed_precondition(hunyuan_dir) -> None:
    small = ["--default-width", "64", "--default-height", "64"]
    async with served(["--model", str(hunyuan_dir), *small]) as hunyuan:
        info = await hunyuan.GetModelInfo(t2i_pb2.GetModelInfoRequest(), timeout=WAIT)
        assert not info.limits.supports_inpainting
        assert not info.limits.supports_image_editing
        for call in (hunyuan.InpaintImage, hunyuan.StreamInpaintImage):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                # Checked before the request: the missing mask is not what is reported.
                await complete(call(inpaint(mask=None), timeout=WAIT))
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "inpainting" in (caught.value.details() or "")
        # The service keeps serving.
        done = await hunyuan.TextToImage(
            t2i_pb2.TextToImageRequest(params=params(num_inference_steps=1)), timeout=WAIT
        )
        assert done.result.steps == 1
