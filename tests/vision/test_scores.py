"""Similarity, zero-shot classification and ranking equal numpy computed from the served
embeddings, for CLIP (softmax) and SigLIP (sigmoid with its bias)."""

from __future__ import annotations

import numpy as np
import pytest
import pytest_asyncio

from mmserve.vision.v1 import vision_pb2
from tests.vision.helpers import (
    ATOL,
    Reference,
    Served,
    image_item,
    image_pb,
    noise_image,
    served,
    text_item,
    unit,
    vectors,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

IMAGES = [noise_image(100 + seed) for seed in range(3)]
TEXTS = ["a photo of a cat", "a red square", "a dog on the beach", "a bird"]
LOGITS = vision_pb2.SIMILARITY_METRIC_MODEL_LOGITS


@pytest.fixture(scope="module", params=["clip", "siglip"])
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def reference(family: str) -> Reference:
    return Reference(family)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(family: str) -> Served:
    async with served(f"builtin:{family}") as srv:
        yield srv


async def embeddings(server: Served) -> tuple[np.ndarray, np.ndarray]:
    """Unit image and text embeddings, as the service returns them."""
    images = await server.stub.EmbedImages(
        vision_pb2.EmbedImagesRequest(images=[image_pb(i) for i in IMAGES]), timeout=30
    )
    texts = await server.stub.EmbedTexts(vision_pb2.EmbedTextsRequest(texts=TEXTS), timeout=30)
    return vectors(images.embeddings), vectors(texts.embeddings)


async def test_similarity_matrix_mixed_items(server: Served) -> None:
    images, texts = await embeddings(server)
    # Queries: image 0, text 1, image 2; candidates: every text, then image 1.
    request = vision_pb2.ComputeSimilarityRequest(
        queries=[image_item(IMAGES[0]), text_item(TEXTS[1]), image_item(IMAGES[2])],
        candidates=[*(text_item(t) for t in TEXTS), image_item(IMAGES[1])],
    )
    reply = await server.stub.ComputeSimilarity(request, timeout=30)
    queries = np.stack([images[0], texts[1], images[2]])
    candidates = np.concatenate([texts, images[1:2]])
    expected = queries @ candidates.T
    assert (reply.scores.rows, reply.scores.columns) == expected.shape
    got = np.array(reply.scores.values, dtype=np.float32).reshape(expected.shape)
    np.testing.assert_allclose(got, expected, atol=ATOL)
    assert abs(got[0, 0]) <= 1.0 + 1e-6


async def test_similarity_with_the_models_logits(server: Served, reference: Reference) -> None:
    images, texts = await embeddings(server)
    request = vision_pb2.ComputeSimilarityRequest(
        queries=[image_item(i) for i in IMAGES],
        candidates=[text_item(t) for t in TEXTS],
        metric=LOGITS,
    )
    reply = await server.stub.ComputeSimilarity(request, timeout=30)
    expected = images @ texts.T * reference.logit_scale + reference.logit_bias
    got = np.array(reply.scores.values, dtype=np.float32).reshape(expected.shape)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # And these are the model's own logits_per_image for the same inputs.
    inputs = reference.processor(
        text=TEXTS,
        images=IMAGES,
        return_tensors="pt",
        padding="max_length" if reference.name == "siglip" else True,
    )
    import torch

    with torch.no_grad():
        own = reference.model(**inputs).logits_per_image.numpy()
    np.testing.assert_allclose(got, own, atol=1e-4)


async def test_zero_shot_matches_numpy_with_template_ensembling(
    server: Served, reference: Reference, family: str
) -> None:
    labels = ["cat", "red square", "dog"]
    templates = ["a photo of a {}.", "a drawing of the {}"]
    reply = await server.stub.ClassifyZeroShot(
        vision_pb2.ClassifyZeroShotRequest(
            images=[image_pb(i) for i in IMAGES], labels=labels, templates=templates
        ),
        timeout=30,
    )
    images, _ = await embeddings(server)
    prompts = [t.replace("{}", label) for label in labels for t in templates]
    raw = await server.stub.EmbedTexts(vision_pb2.EmbedTextsRequest(texts=prompts), timeout=30)
    per_label = unit(vectors(raw.embeddings).reshape(len(labels), len(templates), -1).mean(1))
    logits = images @ per_label.T * reference.logit_scale + reference.logit_bias
    if family == "clip":
        assert reply.activation == "softmax"
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        expected = exp / exp.sum(axis=1, keepdims=True)
    else:
        assert reply.activation == "sigmoid"
        expected = 1 / (1 + np.exp(-logits))
    assert len(reply.classifications) == len(IMAGES)
    for row, classification in zip(expected, reply.classifications, strict=True):
        got = {score.index: score.score for score in classification.labels}
        assert sorted(got) == [0, 1, 2]
        np.testing.assert_allclose([got[j] for j in range(3)], row, atol=1e-5)
        scores = [score.score for score in classification.labels]
        assert scores == sorted(scores, reverse=True)
        assert [s.label for s in classification.labels] == [
            labels[s.index] for s in classification.labels
        ]
        if family == "clip":
            assert sum(scores) == pytest.approx(1.0, abs=1e-5)


async def test_zero_shot_top_k_and_default_template(server: Served) -> None:
    labels = ["cat", "dog", "bird", "car"]
    reply = await server.stub.ClassifyZeroShot(
        vision_pb2.ClassifyZeroShotRequest(images=[image_pb(IMAGES[0])], labels=labels, top_k=2),
        timeout=30,
    )
    images, _ = await embeddings(server)
    raw = await server.stub.EmbedTexts(
        vision_pb2.EmbedTextsRequest(texts=[f"a photo of a {label}." for label in labels]),
        timeout=30,
    )
    best = np.argsort(-(images[0] @ vectors(raw.embeddings).T))[:2]
    assert [s.index for s in reply.classifications[0].labels] == best.tolist()


async def test_rank_text_query_over_images_top_k(server: Served) -> None:
    images, texts = await embeddings(server)
    reply = await server.stub.Rank(
        vision_pb2.RankRequest(
            query=text_item(TEXTS[0]), candidates=[image_item(i) for i in IMAGES], top_k=2
        ),
        timeout=30,
    )
    scores = images @ texts[0]
    order = np.argsort(-scores)[:2]
    assert [r.index for r in reply.results] == order.tolist()
    np.testing.assert_allclose([r.score for r in reply.results], scores[order], atol=ATOL)


async def test_rank_image_query_all_candidates_with_logits(
    server: Served, reference: Reference
) -> None:
    images, texts = await embeddings(server)
    reply = await server.stub.Rank(
        vision_pb2.RankRequest(
            query=image_item(IMAGES[1]),
            candidates=[text_item(t) for t in TEXTS],
            metric=LOGITS,
        ),
        timeout=30,
    )
    scores = texts @ images[1] * reference.logit_scale + reference.logit_bias
    assert [r.index for r in reply.results] == np.argsort(-scores).tolist()
    np.testing.assert_allclose([r.score for r in reply.results], np.sort(scores)[::-1], atol=1e-4)
