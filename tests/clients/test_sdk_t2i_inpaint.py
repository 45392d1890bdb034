"""Inpainting and instruction edits through the SDK (sync and asyncio) and the CLI, against the
real t2i service on its tiny Stable Diffusion pipeline (which inpaints and has no edit
pipeline): masks from numpy arrays and files, streams, field violations, FAILED_PRECONDITION."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmserve_client import (
    Accepted,
    FailedPrecondition,
    Generation,
    InvalidArgument,
    Progress,
    T2IClient,
    aio,
)
from tests.clients.helpers import gradient, png, run_cli
from tests.clients.servers import Served


def _mask(width: int = 64, height: int = 64) -> np.ndarray:
    mask = np.zeros((height, width, 3), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    return mask


@pytest.fixture
def t2i(t2i_server: Served):
    with T2IClient(t2i_server.target, timeout=60) as client:
        yield client


def test_inpaint_unary_and_stream_give_the_same_image(t2i: T2IClient) -> None:
    info = t2i.info()
    assert info.limits["supports_inpainting"] is True
    assert info.limits["supports_image_editing"] is False
    result = t2i.inpaint(gradient(), _mask(), "a cat", steps=2, seed=4)
    assert isinstance(result, Generation)
    assert result.images[0].size == (64, 64)
    assert result.steps == 2  # strength defaults to 1
    with t2i.stream_inpaint(
        gradient(), _mask(), "a cat", steps=2, seed=4, preview_every=1, preview_max_side=16
    ) as stream:
        events = list(stream)
    assert isinstance(events[0], Accepted)
    assert [e.step for e in events if isinstance(e, Progress)] == [1, 2]
    assert events[-1].encoded[0].data == result.encoded[0].data


def test_inpaint_errors_name_the_mask_and_edits_are_a_precondition(t2i: T2IClient) -> None:
    with pytest.raises(InvalidArgument) as caught:
        t2i.inpaint(gradient(), _mask(32, 32), "a cat", steps=1)
    assert [v.field for v in caught.value.field_violations] == ["mask"]
    with pytest.raises(InvalidArgument) as caught:
        t2i.inpaint(gradient(), np.zeros((64, 64, 3), np.uint8), "a cat", steps=1)
    assert "nothing to repaint" in str(caught.value)
    with pytest.raises(FailedPrecondition):
        t2i.instruct(gradient(), "make it blue", steps=1)
    with pytest.raises(FailedPrecondition):
        list(t2i.stream_instruct(gradient(), "make it blue", steps=1))


def test_asyncio_inpaint(t2i_server: Served) -> None:
    async def main() -> Generation:
        async with aio.T2IClient(t2i_server.target, timeout=60) as client:
            return await client.inpaint(gradient(), _mask(), "a cat", steps=2, seed=4)

    result = asyncio.run(main())
    assert result.images[0].size == (64, 64)


def test_cli_inpaint_writes_the_image_and_instruct_explains(
    t2i_server: Served, tmp_path: Path
) -> None:
    source, mask = tmp_path / "in.png", tmp_path / "mask.png"
    source.write_bytes(png())
    Image.fromarray(_mask()).save(mask)
    out = tmp_path / "out.png"
    target = ["--target", t2i_server.target]
    result = run_cli("inpaint", str(source), str(mask), "a cat", "-s", "2", "-o", str(out), *target)
    assert result.code == 0, result.stderr
    assert Image.open(out).size == (64, 64)
    small = tmp_path / "small.png"
    small.write_bytes(png(32, 32))
    bad = run_cli("inpaint", str(source), str(small), "a cat", "-s", "1", *target)
    assert bad.code != 0
    assert "mask" in bad.stderr
    refused = run_cli("instruct", str(source), "make it blue", "-s", "1", *target)
    assert refused.code != 0
    assert "Qwen-Image-Edit" in refused.stderr
    assert Image.open(io.BytesIO(out.read_bytes())).mode == "RGB"
