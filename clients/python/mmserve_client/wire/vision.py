"""Embedding, similarity, zero-shot and ranking requests and results (mmserve.vision.v1)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

import numpy as np
from PIL import Image as PILImage

from mmserve.common.v1 import media_pb2
from mmserve.vision.v1 import vision_pb2

from ..images import ImageLike, to_image_proto
from ..results import Classifications, Embeddings, LabelScore, Ranked, Ranking, Similarity
from .common import usage

# In vision item lists a `str` is a TEXT; pass images as PIL images, arrays, bytes or
# pathlib.Path objects (a path given as `str` would be embedded as text).
VisionItem: TypeAlias = str | ImageLike

POOLING = {
    None: vision_pb2.POOLING_UNSPECIFIED,
    "cls": vision_pb2.POOLING_CLS,
    "mean": vision_pb2.POOLING_MEAN,
}
METRICS = {
    "cosine": vision_pb2.SIMILARITY_METRIC_COSINE,
    "logits": vision_pb2.SIMILARITY_METRIC_MODEL_LOGITS,
    "model_logits": vision_pb2.SIMILARITY_METRIC_MODEL_LOGITS,
}


V = TypeVar("V")


def _choice(table: Mapping[Any, V], value: Any, what: str) -> V:
    try:
        return table[value.lower() if isinstance(value, str) else value]
    except KeyError:
        names = ", ".join(str(k) for k in table if k)
        raise ValueError(f"unknown {what} {value!r}; use {names}") from None


def images_list(images: ImageLike | Iterable[ImageLike]) -> list[media_pb2.Image]:
    """One image or several; a lone str, Path, bytes, array or PIL image is one image."""
    single = (str, bytes, bytearray, memoryview, os.PathLike, np.ndarray, PILImage.Image)
    if isinstance(images, (*single, media_pb2.Image)):
        return [to_image_proto(images)]
    return [to_image_proto(image) for image in images]  # type: ignore[union-attr, unused-ignore]


def item(value: VisionItem) -> vision_pb2.VisionInput:
    if isinstance(value, vision_pb2.VisionInput):
        return value
    if isinstance(value, str):
        return vision_pb2.VisionInput(text=value)
    return vision_pb2.VisionInput(image=to_image_proto(value))


def embed_images(
    images: ImageLike | Iterable[ImageLike], normalize: bool = True, pooling: str | None = None
) -> vision_pb2.EmbedImagesRequest:
    return vision_pb2.EmbedImagesRequest(
        images=images_list(images),
        normalize=normalize,
        pooling=_choice(POOLING, pooling, "pooling"),
    )


def embed_texts(texts: str | Sequence[str], normalize: bool = True) -> vision_pb2.EmbedTextsRequest:
    return vision_pb2.EmbedTextsRequest(
        texts=[texts] if isinstance(texts, str) else list(texts), normalize=normalize
    )


def similarity(
    queries: Sequence[VisionItem],
    candidates: Sequence[VisionItem],
    metric: str = "cosine",
    pooling: str | None = None,
) -> vision_pb2.ComputeSimilarityRequest:
    return vision_pb2.ComputeSimilarityRequest(
        queries=[item(q) for q in queries],
        candidates=[item(c) for c in candidates],
        metric=_choice(METRICS, metric, "metric"),
        pooling=_choice(POOLING, pooling, "pooling"),
    )


def classify(
    images: ImageLike | Iterable[ImageLike],
    labels: Sequence[str],
    templates: Sequence[str] = (),
    top_k: int = 0,
) -> vision_pb2.ClassifyZeroShotRequest:
    return vision_pb2.ClassifyZeroShotRequest(
        images=images_list(images), labels=list(labels), templates=list(templates), top_k=top_k
    )


def rank(
    query: VisionItem,
    candidates: Sequence[VisionItem],
    top_k: int = 0,
    metric: str = "cosine",
    pooling: str | None = None,
) -> vision_pb2.RankRequest:
    return vision_pb2.RankRequest(
        query=item(query),
        candidates=[item(c) for c in candidates],
        top_k=top_k,
        metric=_choice(METRICS, metric, "metric"),
        pooling=_choice(POOLING, pooling, "pooling"),
    )


def _matrix(rows: Sequence[Any], dimension: int) -> np.ndarray[Any, Any]:
    if not rows:
        return np.zeros((0, dimension), dtype=np.float32)
    return np.asarray([row.values for row in rows], dtype=np.float32).reshape(len(rows), -1)


def embeddings(response: Any, job_id: str) -> Embeddings:
    """EmbedImagesResponse or EmbedTextsResponse."""
    truncated = list(getattr(response, "truncated", ()))
    return Embeddings(
        job_id=job_id,
        vectors=_matrix(response.embeddings, response.dimension),
        dimension=response.dimension,
        usage=usage(response.usage),
        truncated=truncated,
    )


def similarity_response(response: vision_pb2.ComputeSimilarityResponse, job_id: str) -> Similarity:
    scores = response.scores
    matrix = np.asarray(scores.values, dtype=np.float32).reshape(scores.rows, scores.columns)
    return Similarity(job_id=job_id, scores=matrix, usage=usage(response.usage))


def classify_response(
    response: vision_pb2.ClassifyZeroShotResponse, job_id: str
) -> Classifications:
    return Classifications(
        job_id=job_id,
        labels=[
            [LabelScore(s.label, s.index, s.score) for s in c.labels]
            for c in response.classifications
        ],
        activation=response.activation,
        usage=usage(response.usage),
    )


def rank_response(response: vision_pb2.RankResponse, job_id: str) -> Ranking:
    return Ranking(
        job_id=job_id,
        results=[Ranked(r.index, r.score) for r in response.results],
        usage=usage(response.usage),
    )
