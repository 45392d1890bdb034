"""The vision clients against the real vision service on its tiny CLIP: embeddings as numpy
matrices, similarity consistent with them, zero-shot probabilities, ranking, errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from mmserve_client import InvalidArgument, VisionClient, aio
from tests.clients.helpers import gradient, png
from tests.clients.servers import Served


@pytest.fixture
def vision(vision_server: Served):
    with VisionClient(vision_server.target, timeout=60) as client:
        yield client


def test_embeddings_are_unit_rows_in_request_order(vision: VisionClient, tmp_path: Path) -> None:
    path = tmp_path / "blue.png"
    path.write_bytes(png(color=(20, 30, 220)))
    images = [png(color=(220, 20, 20)), path, gradient(50, 30)]
    result = vision.embed_images(images)
    assert result.vectors.shape == (3, result.dimension)
    assert result.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-4)
    single = vision.embed_images(path)  # one image is not a list
    assert np.allclose(single.vectors[0], result.vectors[1], atol=1e-5)
    raw = vision.embed_images(images, normalize=False)
    assert not np.allclose(np.linalg.norm(raw.vectors, axis=1), 1.0, atol=1e-3)


def test_similarity_matches_the_embeddings(vision: VisionClient) -> None:
    image = png(color=(220, 20, 20))
    texts = ["a red square", "a dog"]
    matrix = vision.similarity([image, "a photo"], texts)
    assert matrix.scores.shape == (2, 2)
    image_vec = vision.embed_images([image]).vectors[0]
    text_vecs = vision.embed_texts(texts).vectors
    assert np.allclose(matrix.scores[0], text_vecs @ image_vec, atol=1e-4)


def test_classify_gives_probabilities_best_first(vision: VisionClient) -> None:
    result = vision.classify([png(), gradient()], ["cat", "dog", "car"], top_k=0)
    assert result.activation == "softmax"
    assert len(result.labels) == 2
    for labels in result.labels:
        scores = [s.score for s in labels]
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1.0, abs=1e-4)
        assert {s.label for s in labels} == {"cat", "dog", "car"}
    top = vision.classify(png(), ["cat", "dog", "car"], top_k=1)
    assert len(top.labels[0]) == 1


def test_rank_orders_candidates(vision: VisionClient) -> None:
    candidates = ["a cat", png(color=(10, 200, 10)), "a dog", gradient()]
    full = vision.rank("a cat", candidates)
    scores = [r.score for r in full.results]
    assert scores == sorted(scores, reverse=True)
    assert sorted(r.index for r in full.results) == [0, 1, 2, 3]
    assert full.results[0].index == 0  # the query itself wins
    top = vision.rank("a cat", candidates, top_k=2)
    assert [r.index for r in top.results] == [r.index for r in full.results[:2]]


def test_bad_inputs_name_their_fields(vision: VisionClient) -> None:
    with pytest.raises(InvalidArgument) as caught:
        vision.embed_images([png(), b"not an image"])
    assert any(v.field.startswith("images[1]") for v in caught.value.field_violations)
    with pytest.raises(ValueError, match="metric"):
        vision.similarity(["a"], ["b"], metric="euclid")


async def test_concurrent_async_calls_get_their_own_rows(vision_server: Served) -> None:
    """Concurrent calls are micro-batched on the server; each must still get its own vectors."""
    async with aio.VisionClient(vision_server.target, timeout=60) as client:
        texts = ["a red fox", "a blue house"]
        reference = (await client.embed_texts(texts)).vectors
        results = await asyncio.gather(*(client.embed_texts([texts[i % 2]]) for i in range(6)))
        for i, result in enumerate(results):
            assert np.allclose(result.vectors[0], reference[i % 2], atol=1e-4)
