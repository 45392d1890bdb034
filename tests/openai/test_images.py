"""Image generation and edits through /v1/images with the official client, against the real
t2i service's built-in tiny pipeline."""

from __future__ import annotations

import base64
import io

import openai
import pytest
from openai import OpenAI
from PIL import Image

from tests.openai.media import png


def _image(b64: str | None) -> Image.Image:
    assert b64
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_generate_size_n_and_seed(client: OpenAI) -> None:
    reply = client.images.generate(
        model="t2i",
        prompt="a red fox",
        size="64x64",
        n=2,
        response_format="b64_json",
        extra_body={"seed": 42, "num_inference_steps": 2},
    )
    assert reply.data is not None
    assert len(reply.data) == 2
    assert reply.size == "64x64"
    for item in reply.data:
        assert _image(item.b64_json).size == (64, 64)
    # The same seed gives the same image.
    ask = {"model": "t2i", "prompt": "a red fox", "size": "64x64"}
    seeded = {"seed": 42, "num_inference_steps": 2}
    first = client.images.generate(**ask, extra_body=seeded)  # type: ignore[arg-type]
    second = client.images.generate(**ask, extra_body=seeded)  # type: ignore[arg-type]
    assert first.data is not None
    assert second.data is not None
    assert first.data[0].b64_json == second.data[0].b64_json


def test_generate_streams_partial_images(client: OpenAI) -> None:
    stream = client.images.generate(
        model="t2i",
        prompt="a lighthouse",
        size="64x64",
        stream=True,
        partial_images=2,
        extra_body={"num_inference_steps": 6},
    )
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[-1] == "image_generation.completed"
    partial = [e for e in events if e.type == "image_generation.partial_image"]
    assert 1 <= len(partial) <= 2
    assert [e.partial_image_index for e in partial] == list(range(len(partial)))
    assert _image(events[-1].b64_json).size == (64, 64)  # type: ignore[union-attr]


def test_edit_multipart(client: OpenAI) -> None:
    reply = client.images.edit(
        model="t2i",
        image=("input.png", png(64, 64, "blue"), "image/png"),
        prompt="make it green",
        size="64x64",
        extra_body={"seed": 3, "num_inference_steps": 2, "strength": "0.5"},
    )
    assert reply.data is not None
    assert _image(reply.data[0].b64_json).size == (64, 64)


def test_image_errors(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as size:
        client.images.generate(model="t2i", prompt="x", size="big")  # type: ignore[arg-type]
    assert size.value.body["param"] == "size"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as url:
        client.images.generate(model="t2i", prompt="x", response_format="url")
    assert url.value.body["param"] == "response_format"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.images.generate(model="vl", prompt="x")


def _mask(width: int, height: int, transparent_columns: int) -> bytes:
    """OpenAI's mask: the left `transparent_columns` are fully transparent (to be edited)."""
    mask = Image.new("RGBA", (width, height), (255, 255, 255, 255))
    mask.paste((0, 0, 0, 0), (0, 0, transparent_columns, height))
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    return buffer.getvalue()


def test_edit_with_a_mask_inpaints_the_transparent_area(client: OpenAI) -> None:
    ask = {
        "model": "t2i",
        "image": ("input.png", png(64, 64, "blue"), "image/png"),
        "prompt": "a red door",
        "extra_body": {"seed": 3, "num_inference_steps": 2},
    }
    half = client.images.edit(**ask, mask=("mask.png", _mask(64, 64, 32), "image/png"))  # type: ignore[arg-type]
    whole = client.images.edit(**ask, mask=("mask.png", _mask(64, 64, 64), "image/png"))  # type: ignore[arg-type]
    assert half.data is not None
    assert whole.data is not None
    assert _image(half.data[0].b64_json).size == (64, 64)
    # Which area is repainted follows the mask's transparency.
    assert half.data[0].b64_json != whole.data[0].b64_json


def test_edit_mask_errors_name_the_mask(client: OpenAI) -> None:
    image = ("input.png", png(64, 64, "blue"), "image/png")
    for mask in (
        png(64, 64, "white"),  # no alpha channel
        _mask(64, 64, 0),  # nothing transparent: nothing to edit
        _mask(32, 32, 16),  # not the image's size
        b"not an image",
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            client.images.edit(
                model="t2i",
                image=image,
                prompt="x",
                mask=("mask.png", mask, "image/png"),
                extra_body={"num_inference_steps": 2},
            )
        assert caught.value.body["param"] == "mask"  # type: ignore[index]
