"""The t2i service with the tiny Stable Diffusion pipeline, through a real server and the
generated stubs: images equal to the in-process pipeline's, image-to-image, streams with
previews, cancellation, deadlines, validation and model info."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import pytest_asyncio
from diffusers import AutoPipelineForImage2Image, StableDiffusionPipeline
from PIL import Image

from mmserve.common.v1 import job_pb2, media_pb2
from mmserve.t2i.v1 import t2i_pb2
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

# A job that only ends by being cancelled: the most steps the scheduler takes (1000 timesteps
# minus DDIM's offset), at a size where each step is slow (about 0.5 s), so it would run for
# minutes.
LONG = 999
LONG_SIZE = 128
WAIT = 60  # bound of every wait for a short job on a loaded 2-core machine


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stub(sd_dir):
    argv = ["--model", str(sd_dir), "--max-steps", str(LONG), "--max-images-per-request", "3"]
    async with served(argv) as connected:
        yield connected


@pytest.fixture(scope="module")
def reference(sd_dir) -> Any:
    return load_reference(sd_dir, StableDiffusionPipeline)


async def test_text_to_image_equals_in_process_pipeline(stub, reference) -> None:
    reply = await stub.TextToImage(
        t2i_pb2.TextToImageRequest(params=params(seed=7, num_inference_steps=3, num_images=2)),
        timeout=WAIT,
    )
    expected = reference(
        PROMPT,
        num_inference_steps=3,
        num_images_per_prompt=2,
        generator=generators(7, 2),
        height=64,
        width=64,
        guidance_scale=7.5,
    ).images
    result = reply.result
    assert [image.data for image in result.images] == png_bytes(expected)
    assert [(i.width, i.height, i.format) for i in result.images] == [
        (64, 64, media_pb2.IMAGE_FORMAT_PNG)
    ] * 2
    assert (result.seed, result.steps, result.prompt_truncated) == (7, 3, False)
    assert result.usage.input_tokens == len(reference.tokenizer(PROMPT)["input_ids"])
    assert result.usage.run_seconds > 0


async def test_same_seed_same_bytes_and_unset_seed_is_returned(stub) -> None:
    def request(**extra: Any) -> t2i_pb2.TextToImageRequest:
        return t2i_pb2.TextToImageRequest(params=params(num_inference_steps=2, **extra))

    first = (await stub.TextToImage(request(), timeout=WAIT)).result
    second = (await stub.TextToImage(request(), timeout=WAIT)).result
    assert first.seed != second.seed
    assert first.images[0].data != second.images[0].data
    again = (await stub.TextToImage(request(seed=first.seed), timeout=WAIT)).result
    assert again.seed == first.seed
    assert again.images[0].data == first.images[0].data


@pytest.mark.parametrize(
    ("fmt", "magic"),
    [(media_pb2.IMAGE_FORMAT_JPEG, b"\xff\xd8\xff"), (media_pb2.IMAGE_FORMAT_WEBP, b"RIFF")],
)
async def test_output_formats_and_quality(stub, fmt: int, magic: bytes) -> None:
    sizes = []
    for quality in (95, 10):
        reply = await stub.TextToImage(
            t2i_pb2.TextToImageRequest(
                params=params(
                    seed=1, num_inference_steps=2, output_format=fmt, output_quality=quality
                )
            ),
            timeout=WAIT,
        )
        image = reply.result.images[0]
        assert image.format == fmt
        assert image.data.startswith(magic)
        assert Image.open(io.BytesIO(image.data)).size == (64, 64)
        sizes.append(len(image.data))
    assert sizes[1] < sizes[0]  # quality reached the encoder


async def test_image_to_image_equals_in_process_and_respects_strength(stub, reference) -> None:
    source = solid_png((64, 64), (200, 40, 40))
    image_pipe = AutoPipelineForImage2Image.from_pipe(reference)
    image_pipe.set_progress_bar_config(disable=True)
    outputs = {}
    for strength in (0.5, 1.0):
        reply = await stub.ImageToImage(
            t2i_pb2.ImageToImageRequest(
                params=params(seed=3, num_inference_steps=4),
                image=media_pb2.Image(data=source),
                strength=strength,
            ),
            timeout=WAIT,
        )
        expected = image_pipe(
            PROMPT,
            image=Image.open(io.BytesIO(source)).convert("RGB"),
            strength=strength,
            num_inference_steps=4,
            generator=generators(3, 1),
            guidance_scale=7.5,
        ).images
        assert reply.result.steps == int(4 * strength)
        assert [image.data for image in reply.result.images] == png_bytes(expected)
        outputs[strength] = reply.result.images[0].data
    assert outputs[0.5] != outputs[1.0]


async def test_image_to_image_size_defaults_to_the_input(stub) -> None:
    reply = await stub.ImageToImage(
        t2i_pb2.ImageToImageRequest(
            params=params(seed=1, num_inference_steps=2),
            image=media_pb2.Image(data=solid_png((96, 64), (10, 200, 10))),
        ),
        timeout=WAIT,
    )
    image = reply.result.images[0]
    assert (image.width, image.height) == (96, 64)
    assert reply.result.steps == int(2 * 0.6)  # default strength 0.6


async def test_stream_yields_ordered_steps_previews_then_images(stub) -> None:
    request = t2i_pb2.TextToImageRequest(
        params=params(seed=11, num_inference_steps=4),
        preview=t2i_pb2.PreviewOptions(every_n_steps=2, max_side=48),
    )
    events = [event async for event in stub.StreamTextToImage(request, timeout=WAIT)]
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[0] == "accepted"
    assert kinds[-1] == "result"
    assert {event.job_id for event in events} == {events[0].accepted.job_id}
    steps = [event.step for event in events if event.HasField("step")]
    numbers = [step.progress.step for step in steps]
    # Every step is reported unless a slow reader lets a newer one replace it; order holds.
    assert numbers == sorted(set(numbers))
    assert numbers[-1] == 4
    assert all(step.progress.total_steps == 4 for step in steps)
    previews = {s.progress.step: s.preview for s in steps if s.HasField("preview")}
    assert sorted(previews) == [2, 4]  # previews are never dropped
    for preview in previews.values():
        assert preview.format == media_pb2.IMAGE_FORMAT_PNG
        decoded = Image.open(io.BytesIO(preview.data))
        assert max(decoded.size) == 48 == max(preview.width, preview.height)
    unary = await stub.TextToImage(t2i_pb2.TextToImageRequest(params=request.params))
    assert events[-1].result.images[0].data == unary.result.images[0].data


async def test_stream_image_to_image(stub) -> None:
    request = t2i_pb2.ImageToImageRequest(
        params=params(seed=2, num_inference_steps=4),
        image=media_pb2.Image(data=solid_png((64, 64), (0, 0, 255))),
        strength=0.5,
        preview=t2i_pb2.PreviewOptions(every_n_steps=1),
    )
    events = [event async for event in stub.StreamImageToImage(request, timeout=WAIT)]
    steps = [event.step for event in events if event.HasField("step")]
    assert [s.progress.step for s in steps] == [1, 2]  # each carries a preview: none dropped
    assert all(s.progress.total_steps == 2 and s.HasField("preview") for s in steps)
    assert all(max(s.preview.width, s.preview.height) == 128 for s in steps)  # default side
    assert events[-1].result.steps == 2


async def test_long_prompt_is_truncated_and_reported(stub) -> None:
    long_prompt = " ".join(["a red cat on a blue house"] * 30)
    reply = await stub.TextToImage(
        t2i_pb2.TextToImageRequest(params=params(prompt=long_prompt, num_inference_steps=1)),
        timeout=WAIT,
    )
    assert reply.result.prompt_truncated
    assert reply.result.usage.input_tokens == 77


async def test_cancel_at_step_two_frees_the_executor_for_the_next_job(stub) -> None:
    long_stream = stub.StreamTextToImage(
        t2i_pb2.TextToImageRequest(
            params=params(seed=1, num_inference_steps=LONG, width=LONG_SIZE, height=LONG_SIZE)
        ),
        timeout=WAIT * 5,
    )

    long_id = await asyncio.wait_for(job_id_at_step_two(long_stream), WAIT)
    next_stream = stub.StreamTextToImage(
        t2i_pb2.TextToImageRequest(params=params(seed=2, num_inference_steps=2)), timeout=WAIT
    )
    first = await asyncio.wait_for(next_stream.read(), WAIT)
    assert first.accepted.queue.position == 1  # waits behind the long job

    cancelled = await stub.CancelJob(job_pb2.CancelJobRequest(job_id=long_id), timeout=WAIT)
    assert cancelled.job.state == job_pb2.JOB_STATE_CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(long_stream.read(), WAIT)
    assert caught.value.code() == grpc.StatusCode.CANCELLED

    # Only a freed device lets the next job run: its steps and images arrive, in order.
    async def rest_of_next() -> list[t2i_pb2.StreamTextToImageResponse]:
        events = []
        while (event := await next_stream.read()) is not grpc.aio.EOF:
            events.append(event)
        return events

    rest = await asyncio.wait_for(rest_of_next(), WAIT)
    kinds = [event.WhichOneof("event") for event in rest]
    assert "step" in kinds
    assert kinds[-1] == "result"
    job = (await stub.GetJob(job_pb2.GetJobRequest(job_id=long_id))).job
    assert job.state == job_pb2.JOB_STATE_CANCELLED
    assert job.progress.step < LONG


async def test_deadline_stops_a_running_job_and_the_next_one_runs(stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.TextToImage(
            t2i_pb2.TextToImageRequest(
                params=params(num_inference_steps=LONG, width=LONG_SIZE, height=LONG_SIZE)
            ),
            timeout=2,
        )
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    reply = await stub.TextToImage(
        t2i_pb2.TextToImageRequest(params=params(num_inference_steps=1)), timeout=WAIT
    )
    assert reply.result.steps == 1


def _t2i(**fields: Any) -> t2i_pb2.TextToImageRequest:
    preview = fields.pop("preview", None)
    return t2i_pb2.TextToImageRequest(params=params(**fields), preview=preview)


def _preview(**fields: Any) -> t2i_pb2.PreviewOptions:
    return t2i_pb2.PreviewOptions(**fields)


def _i2i(image: bytes | None = None, **fields: Any) -> t2i_pb2.ImageToImageRequest:
    request = t2i_pb2.ImageToImageRequest(params=params(num_inference_steps=4))
    if image is not None:
        request.image.data = image
    if "strength" in fields:
        request.strength = fields.pop("strength")
    request.params.MergeFrom(params(**fields))
    return request


INVALID: list[tuple[str, Callable[[], Any], str]] = [
    ("width not a multiple", lambda: _t2i(width=100), "params.width"),
    ("height too small", lambda: _t2i(height=32), "params.height"),
    ("width too large", lambda: _t2i(width=2048), "params.width"),
    ("too many pixels", lambda: _t2i(width=1024, height=1024 + 8), "params.height"),
    ("zero steps", lambda: _t2i(num_inference_steps=0), "params.num_inference_steps"),
    ("too many steps", lambda: _t2i(num_inference_steps=LONG + 1), "params.num_inference_steps"),
    ("zero images", lambda: _t2i(num_images=0), "params.num_images"),
    ("too many images", lambda: _t2i(num_images=4), "params.num_images"),
    ("negative guidance", lambda: _t2i(guidance_scale=-1.0), "params.guidance_scale"),
    ("empty prompt", lambda: _t2i(prompt="  "), "params.prompt"),
    ("unknown output format", lambda: _t2i(output_format=42), "params.output_format"),
    ("quality out of range", lambda: _t2i(output_quality=101), "params.output_quality"),
    ("preview too small", lambda: _t2i(preview=_preview(max_side=8)), "preview.max_side"),
    ("strength zero", lambda: _i2i(solid_png((64, 64), (1, 2, 3)), strength=0.0), "strength"),
    ("strength above one", lambda: _i2i(solid_png((64, 64), (1, 2, 3)), strength=1.5), "strength"),
    ("no image", lambda: _i2i(None), "image"),
    ("image not an image", lambda: _i2i(b"not an image at all"), "image.data"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("build", "field"), [(b, f) for _, b, f in INVALID], ids=[name for name, _, _ in INVALID]
)
async def test_invalid_argument_names_the_field(stub, build, field: str) -> None:
    request = build()
    call = stub.ImageToImage if isinstance(request, t2i_pb2.ImageToImageRequest) else None
    if call is None:
        call = stub.StreamTextToImage if request.HasField("preview") else stub.TextToImage
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _complete(call(request, timeout=WAIT))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(caught.value)


async def _complete(call: Any) -> None:
    """Awaits a unary call, or reads a stream to its end (raising its status)."""
    if isinstance(call, grpc.aio.UnaryStreamCall):
        async for _ in call:
            pass
    else:
        await call


async def test_all_problems_are_reported_together(stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.TextToImage(_t2i(width=7, num_inference_steps=0, output_quality=0))
    assert set(field_violations(caught.value)) == {
        "params.width",
        "params.num_inference_steps",
        "params.output_quality",
    }


async def test_model_info_reports_family_limits_and_scheduler(stub) -> None:
    reply = await stub.GetModelInfo(t2i_pb2.GetModelInfoRequest(), timeout=WAIT)
    info, limits = reply.model_info, reply.limits
    assert (info.family, info.architecture) == ("stable_diffusion", "StableDiffusionPipeline")
    assert {"text_to_image", "image_to_image", "step_previews"} <= set(info.capabilities)
    assert reply.scheduler == "DDIMScheduler"
    assert (limits.size_multiple, limits.min_size, limits.max_size) == (8, 64, 1024)
    assert (limits.default_width, limits.default_height) == (64, 64)  # the model's native size
    assert (limits.max_steps, limits.default_steps) == (LONG, 30)  # configured, family
    assert limits.max_images_per_request == 3
    assert limits.max_prompt_tokens == 77
    assert limits.supports_image_to_image
    assert limits.supports_negative_prompt


async def test_image_to_image_reports_request_and_image_problems_together(stub) -> None:
    # Problems parsing finds and problems only the decoded image reveals share one reply.
    image = solid_png((64, 64), (1, 2, 3))
    cases = [
        (_i2i(b"not an image at all", output_quality=0), {"image.data", "params.output_quality"}),
        (_i2i(image, strength=1.5, width=100), {"strength", "params.width"}),
        (_i2i(None, output_format=42), {"image", "params.output_format"}),
    ]
    for request, fields in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ImageToImage(request, timeout=WAIT)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(field_violations(caught.value)) == fields
