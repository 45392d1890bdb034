"""Every supported family served through the same code path: SigLIP, SigLIP2, DINOv2 (CLS
and mean pooling) and DINOv3 (with register tokens), against the in-process model."""

from __future__ import annotations

import numpy as np
import pytest

from mmserve.vision.v1 import vision_pb2
from tests.vision.helpers import ATOL, Reference, image_pb, noise_image, served, vectors

IMAGES = [noise_image(600 + seed, (56 - 4 * seed, 36 + 6 * seed)) for seed in range(3)]
TEXTS = ["a photo of a cat", "a red car", "zebra" * 30]


@pytest.mark.parametrize("family", ["siglip", "siglip2"])
async def test_siglip_families_images_and_texts(family: str) -> None:
    reference = Reference(family)
    async with served(f"builtin:{family}") as srv:
        images = await srv.stub.EmbedImages(
            vision_pb2.EmbedImagesRequest(images=[image_pb(i) for i in IMAGES], normalize=False),
            timeout=30,
        )
        texts = await srv.stub.EmbedTexts(
            vision_pb2.EmbedTextsRequest(texts=TEXTS, normalize=False), timeout=30
        )
        info = await srv.stub.GetModelInfo(vision_pb2.GetModelInfoRequest(), timeout=10)
    np.testing.assert_allclose(vectors(images.embeddings), reference.images(IMAGES), atol=ATOL)
    np.testing.assert_allclose(vectors(texts.embeddings), reference.texts(TEXTS), atol=ATOL)
    assert list(texts.truncated) == [False, False, True]
    assert info.model_info.family == family
    assert info.supports_text
    assert info.limits.max_text_tokens == reference.model.config.text_config.max_position_embeddings


@pytest.mark.parametrize("family", ["dinov2", "dinov3"])
async def test_dino_families_cls_and_mean_pooling(family: str) -> None:
    reference = Reference(family)
    async with served(f"builtin:{family}") as srv:
        replies = {}
        for name, pooling in (
            ("default", vision_pb2.POOLING_UNSPECIFIED),
            ("cls", vision_pb2.POOLING_CLS),
            ("mean", vision_pb2.POOLING_MEAN),
        ):
            replies[name] = await srv.stub.EmbedImages(
                vision_pb2.EmbedImagesRequest(
                    images=[image_pb(i) for i in IMAGES], normalize=False, pooling=pooling
                ),
                timeout=30,
            )
        info = await srv.stub.GetModelInfo(vision_pb2.GetModelInfoRequest(), timeout=10)
    cls = reference.images(IMAGES, "cls")
    mean = reference.images(IMAGES, "mean")
    np.testing.assert_allclose(vectors(replies["default"].embeddings), cls, atol=ATOL)
    np.testing.assert_allclose(vectors(replies["cls"].embeddings), cls, atol=ATOL)
    np.testing.assert_allclose(vectors(replies["mean"].embeddings), mean, atol=ATOL)
    assert not np.allclose(cls, mean, atol=1e-3)
    assert info.embedding_dimension == cls.shape[1]
    assert not info.supports_text


async def test_dino_default_pooling_is_configurable() -> None:
    reference = Reference("dinov2")
    async with served("builtin:dinov2", "--default-pooling", "mean") as srv:
        reply = await srv.stub.EmbedImages(
            vision_pb2.EmbedImagesRequest(images=[image_pb(i) for i in IMAGES], normalize=False),
            timeout=30,
        )
    np.testing.assert_allclose(
        vectors(reply.embeddings), reference.images(IMAGES, "mean"), atol=ATOL
    )
