"""The fast image preprocessing (services/vision/pixels.py) against the image processors it
stands in for: equal outputs on the tiny models' processors, declines where it cannot be exact,
and the processor whenever it declines, fails verification or is switched off."""

from __future__ import annotations

import dataclasses
import logging
from functools import cache
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import BatchFeature, CLIPImageProcessorPil
from transformers.image_transforms import center_crop

from services.runtime.config import load_settings
from services.vision import pixels
from services.vision.builtin import BUILTINS
from services.vision.config import VisionSettings
from services.vision.engine import VisionEngine
from services.vision.inputs import ImageJob, prepare_images
from services.vision.loading import load_image_processor
from services.vision.pixels import (
    TOLERANCE,
    Declined,
    PixelTransform,
    choose_preprocessor,
    verified_transform,
)
from tests.vision.helpers import noise_image

EXACT_FAMILIES = ("clip", "siglip", "dinov2", "dinov3")


@cache
def processor(family: str) -> Any:
    """The tiny model's image processor, loaded the way the engine loads it."""
    return load_image_processor(BUILTINS.get(family).build())


@cache
def transform(family: str) -> PixelTransform:
    result = verified_transform(processor(family))
    assert isinstance(result, PixelTransform), result
    return result


def max_difference(expected: torch.Tensor, got: torch.Tensor) -> float:
    assert expected.shape == got.shape
    assert expected.dtype == got.dtype == torch.float32
    return float((expected - got).abs().max())


def processor_pixels(family: str, images: list[Image.Image]) -> torch.Tensor:
    return processor(family)(images=images, return_tensors="pt")["pixel_values"]


# Widths and heights from 1 px to photo size, with aspect ratios up to 40:1 either way.
sides = st.integers(min_value=1, max_value=700)


@pytest.mark.parametrize("family", EXACT_FAMILIES)
@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(width=sides, height=sides, seed=st.integers(0, 2**16))
def test_transform_equals_processor(family: str, width: int, height: int, seed: int) -> None:
    height = max(height, width // 40, 1)
    width = max(width, height // 40, 1)
    image = noise_image(seed, (width, height))
    expected = processor_pixels(family, [image])
    got = transform(family)([image])
    assert set(got) == {"pixel_values"}
    assert max_difference(expected, got["pixel_values"]) <= TOLERANCE


@pytest.mark.parametrize("family", EXACT_FAMILIES)
def test_batch_of_mixed_sizes_equals_processor(family: str) -> None:
    images = [noise_image(seed, size) for seed, size in enumerate([(640, 480), (31, 77), (5, 5)])]
    got = prepare_images(transform(family), images)
    assert got.count == 3
    assert max_difference(processor_pixels(family, images), got.tensors["pixel_values"]) == 0.0


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_images_that_are_not_plain_rgb_go_to_the_processor(mode: str) -> None:
    image = noise_image(7, (40, 30)).convert(mode)
    got = transform("clip")([image])["pixel_values"]
    assert max_difference(processor_pixels("clip", [image]), got) == 0.0


def test_rgb_with_a_transparent_colour_goes_to_the_processor() -> None:
    image = noise_image(8, (40, 30))
    image.info["transparency"] = (0, 0, 0)
    got = transform("clip")([image])["pixel_values"]
    assert max_difference(processor_pixels("clip", [image]), got) == 0.0


@pytest.mark.parametrize(
    ("image_size", "crop"),
    [((9, 7), (4, 4)), ((8, 6), (5, 3)), ((3, 2), (7, 6)), ((2, 9), (5, 4)), ((1, 1), (4, 5))],
)
def test_crop_box_matches_transformers_center_crop_and_its_padding(
    image_size: tuple[int, int], crop: tuple[int, int]
) -> None:
    image = noise_image(9, image_size)
    chw = np.moveaxis(np.asarray(image), -1, 0)
    expected = np.moveaxis(center_crop(chw, crop, input_data_format="channels_first"), 0, -1)
    got = np.asarray(image.crop(pixels.center_crop_box(image.size, crop)))
    np.testing.assert_array_equal(got, expected)


# --- declining ---------------------------------------------------------------------------------


def test_siglip2_declines_and_its_processor_is_used(caplog: pytest.LogCaptureFixture) -> None:
    siglip2 = processor("siglip2")
    declined = PixelTransform.from_processor(siglip2)
    assert isinstance(declined, Declined)
    assert "Siglip2ImageProcessorPil overrides" in declined.reason
    with caplog.at_level(logging.INFO, logger="mmserve.vision"):
        assert choose_preprocessor(siglip2, True) is siglip2
    assert "declined" in caplog.text
    prepared = prepare_images(siglip2, [noise_image(1)])
    assert {"pixel_values", "pixel_attention_mask", "spatial_shapes"} <= set(prepared.tensors)


class _ShiftedNormalize(CLIPImageProcessorPil):
    def normalize(self, image: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
        return super().normalize(image, *args, **kwargs) + 0.5


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: _ShiftedNormalize(), "overrides normalize"),
        (lambda: CLIPImageProcessorPil(do_pad=True), "do_pad"),
        (lambda: CLIPImageProcessorPil(size={"shortest_edge": 32, "longest_edge": 64}), "size"),
        (lambda: CLIPImageProcessorPil(size={"max_height": 32, "max_width": 32}), "size"),
        (lambda: CLIPImageProcessorPil(do_rescale=False, do_normalize=False), "uint8"),
        (lambda: CLIPImageProcessorPil(image_mean=[0.5, 0.5]), "image_mean"),
        (lambda: CLIPImageProcessorPil(data_format="channels_last"), "sets data_format"),
        (lambda: "not a processor", "not a PIL-backend"),
    ],
)
def test_configurations_it_does_not_reproduce_decline(make: Any, reason: str) -> None:
    declined = PixelTransform.from_processor(make())
    assert isinstance(declined, Declined)
    assert reason in declined.reason


def test_an_off_by_one_crop_fails_verification(monkeypatch: pytest.MonkeyPatch) -> None:
    exact = pixels.center_crop_box

    def shifted(size: tuple[int, int], crop: tuple[int, int]) -> tuple[int, int, int, int]:
        left, top, right, bottom = exact(size, crop)
        return left + 1, top, right + 1, bottom

    monkeypatch.setattr(pixels, "center_crop_box", shifted)
    declined = verified_transform(processor("clip"))
    assert isinstance(declined, Declined)
    assert "differs from the processor" in declined.reason


def test_values_off_by_more_than_the_tolerance_fail_verification(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exact = pixels._value_table
    monkeypatch.setattr(pixels, "_value_table", lambda p: exact(p) + np.float32(4 * TOLERANCE))
    declined = verified_transform(processor("dinov2"))
    assert isinstance(declined, Declined)
    assert "max abs difference" in declined.reason


def test_a_processor_returning_more_than_pixel_values_fails_verification() -> None:
    clip = processor("clip")

    def with_extra_key(**kwargs: Any) -> BatchFeature:
        batch = clip(**kwargs)
        return BatchFeature({**batch, "image_sizes": torch.tensor([[1, 1]])})

    swapped = dataclasses.replace(transform("clip"), processor=with_extra_key)
    reason = pixels.mismatch(swapped, noise_image(3))
    assert reason is not None
    assert "image_sizes" in reason


# --- the engine's choice -------------------------------------------------------------------------


@pytest.mark.parametrize("enabled", [True, False])
def test_engine_uses_the_transform_only_when_enabled(
    enabled: bool, caplog: pytest.LogCaptureFixture
) -> None:
    flag = "--exact-fast-preprocessing" if enabled else "--no-exact-fast-preprocessing"
    argv = ["--model", "builtin:clip", flag, "--preprocess-in-batch", "off"]
    engine = VisionEngine(load_settings(VisionSettings, argv))
    with caplog.at_level(logging.INFO, logger="mmserve.vision"):
        engine.load()
    assert isinstance(engine.preprocessor, PixelTransform) is enabled
    if not enabled:
        assert engine.preprocessor is engine.image_processor
    assert ("fast path, verified" in caplog.text) is enabled
    images = [noise_image(seed, (60 + seed, 45)) for seed in range(3)]
    expected = processor_pixels("clip", images)
    got = engine.prepare_images(images).tensors["pixel_values"]
    assert max_difference(expected, got) <= TOLERANCE


def test_preprocessing_in_the_batch_gives_the_same_inputs_and_embeddings() -> None:
    """CPU devices defer resize and normalize to the batch (every core, before the forward
    pass); the tensors and embeddings are those of preprocessing at request time."""
    engines = {}
    for mode in ("on", "off"):
        argv = ["--model", "builtin:clip", "--preprocess-in-batch", mode]
        engines[mode] = VisionEngine(load_settings(VisionSettings, argv))
        engines[mode].load()
    batches = [[noise_image(seed, (50 + 7 * seed, 40)) for seed in range(n)] for n in (1, 4, 2)]
    deferred = [ImageJob(engines["on"].prepare_images(images), "cls") for images in batches]
    assert all(job.inputs.deferred and not job.inputs.tensors for job in deferred)
    ready = [ImageJob(engines["off"].prepare_images(images), "cls") for images in batches]
    assert all(not job.inputs.deferred for job in ready)
    # A large image is preprocessed at once even then (the queue must not hold its pixels),
    # and a batch mixing it with deferred ones keeps each job's own rows.
    large = Image.new("RGB", (2049, 2048), (90, 120, 150))
    at_once = ImageJob(engines["on"].prepare_images([large]), "cls")
    assert not at_once.inputs.deferred
    batches.insert(1, [large])
    deferred.insert(1, at_once)
    ready.insert(1, ImageJob(engines["off"].prepare_images([large]), "cls"))
    for done, expected in zip(engines["on"]._preprocess_deferred(deferred), ready, strict=True):
        assert done.inputs.count == expected.inputs.count
        got, want = done.inputs.tensors["pixel_values"], expected.inputs.tensors["pixel_values"]
        assert max_difference(want, got) == 0.0
    on = engines["on"].embed_images_batch(deferred)
    off = engines["off"].embed_images_batch(ready)
    for a, b in zip(on, off, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
