"""The t2i clients (sync and asyncio) against the real t2i service on its tiny Stable Diffusion
pipeline: images back as PIL, typed stream events in contract order, previews, image-to-image
from numpy input, reproducible seeds, field violations."""

from __future__ import annotations

import numpy as np
import pytest

from mmserve_client import (
    Accepted,
    Generation,
    InvalidArgument,
    JobState,
    Progress,
    T2IClient,
    aio,
)
from tests.clients.helpers import gradient
from tests.clients.servers import Served


@pytest.fixture
def t2i(t2i_server: Served):
    with T2IClient(t2i_server.target, timeout=60) as client:
        yield client


def test_generate_returns_pil_images_job_id_and_usage(t2i: T2IClient) -> None:
    seen: list[str] = []
    result = t2i.generate("a red fox", width=64, height=72, steps=2, seed=7, on_job=seen.append)
    assert isinstance(result, Generation)
    assert result.images[0].size == (64, 72)
    assert result.encoded[0].data.startswith(b"\x89PNG")
    assert (result.encoded[0].width, result.encoded[0].height) == (64, 72)
    assert result.seed == 7
    assert result.steps == 2
    assert result.usage.run_seconds > 0
    assert seen == [result.job_id]  # the header arrived before the result
    assert t2i.get_job(result.job_id).state is JobState.SUCCEEDED


def test_same_seed_gives_same_pixels(t2i: T2IClient) -> None:
    first = t2i.generate("a blue house", steps=2, seed=11)
    second = t2i.generate("a blue house", steps=2, seed=11)
    third = t2i.generate("a blue house", steps=2, seed=12)
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(second.images[0]))
    assert not np.array_equal(np.asarray(first.images[0]), np.asarray(third.images[0]))


def test_stream_yields_accepted_steps_with_previews_then_images(t2i: T2IClient) -> None:
    with t2i.stream_generate(
        "a green tree", steps=3, seed=1, preview_every=1, preview_max_side=32, num_images=2
    ) as stream:
        events = list(stream)
    assert isinstance(events[0], Accepted)
    assert stream.job_id == events[0].job_id
    steps = [e for e in events if isinstance(e, Progress)]
    assert [e.step for e in steps] == [1, 2, 3]
    assert all(e.total == 3 for e in steps)
    assert all(e.preview is not None and max(e.preview.size) <= 32 for e in steps)
    result = events[-1]
    assert isinstance(result, Generation)
    assert len(result.images) == 2
    assert {e.job_id for e in events} == {stream.job_id}


def test_edit_takes_a_numpy_image(t2i: T2IClient) -> None:
    result = t2i.edit(
        gradient(64, 64), "a cat", strength=0.5, steps=4, seed=3, output_format="jpeg"
    )
    assert result.encoded[0].format == "jpeg"
    assert result.images[0].size == (64, 64)
    assert result.steps == 2  # about steps * strength


def test_invalid_request_raises_with_field_violations(t2i: T2IClient) -> None:
    with pytest.raises(InvalidArgument) as caught:
        t2i.generate("a fox", width=65)
    error = caught.value
    assert [v.field for v in error.field_violations] == ["params.width"]
    assert error.request_id
    assert "params.width" in str(error)
    with pytest.raises(InvalidArgument) as caught:
        list(t2i.stream_generate("", steps=1))
    assert "params.prompt" in [v.field for v in caught.value.field_violations]


def test_info_reports_the_pipeline_and_limits(t2i: T2IClient) -> None:
    info = t2i.info()
    assert info.model.family == "stable_diffusion"
    assert info.model.state == "ready"
    assert info.limits["size_multiple"] == 8
    assert info.extras["scheduler"]
    assert t2i.health() == "serving"


def test_scheduler_guidance_and_negative_prompt_reach_the_service(t2i: T2IClient) -> None:
    schedulers = t2i.info().extras["schedulers"]
    assert "EulerDiscreteScheduler" in schedulers
    common = {"steps": 2, "seed": 3, "guidance_scale": 4.0}
    base = t2i.generate("a fox", **common)
    varied = [
        t2i.generate("a fox", scheduler="EulerDiscreteScheduler", **common),
        t2i.generate("a fox", negative_prompt="blurry", **common),
        t2i.generate("a fox", **{**common, "guidance_scale": 9.0}),
    ]
    pixels = [np.asarray(g.images[0]) for g in (base, *varied)]
    assert all(not np.array_equal(pixels[0], other) for other in pixels[1:])
    with pytest.raises(InvalidArgument) as caught:
        t2i.generate("a fox", scheduler="NoSuchScheduler", steps=1)
    assert [v.field for v in caught.value.field_violations] == ["params.scheduler"]


def test_adapters_go_on_the_wire_in_every_form(t2i: T2IClient) -> None:
    # The stack's service has no LoRA folder: every named adapter is refused by name, which
    # shows the SDK sent each entry.
    assert t2i.info().extras.get("adapters", []) == []
    for adapters in ({"ink": 0.5, "paper": 1.0}, ["ink", ("paper", 0.25)]):
        with pytest.raises(InvalidArgument) as caught:
            t2i.generate("a fox", steps=1, adapters=adapters)
        assert [v.field for v in caught.value.field_violations] == [
            "params.adapters[0].name",
            "params.adapters[1].name",
        ]
        assert "'ink'" in str(caught.value)


async def test_async_client_generates_and_streams(t2i_server: Served) -> None:
    async with aio.T2IClient(t2i_server.target, timeout=60) as client:
        result = await client.generate("a red fox", steps=2, seed=5)
        assert result.images[0].size == (64, 64)
        events = [e async for e in client.stream_generate("a red fox", steps=2, seed=5)]
        assert isinstance(events[0], Accepted)
        final = events[-1]
        assert isinstance(final, Generation)
        assert final.encoded[0].data == result.encoded[0].data
        assert (await client.get_job(final.job_id)).state is JobState.SUCCEEDED
