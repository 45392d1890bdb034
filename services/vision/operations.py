"""mmserve.vision.v1.VisionService as operations: each RPC checks its request on the loop (no
model needed), composes the two shared device operations (embedding.py) and renders numpy
results as protobuf. GetModelInfo is answered inline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from mmserve.common.v1 import job_pb2, media_pb2
from mmserve.vision.v1 import vision_pb2
from services.runtime import job_protos
from services.runtime.app import ServiceRuntime
from services.runtime.operations import (
    CallFacts,
    Inline,
    Jobs,
    OperationTable,
    Usage,
)
from services.runtime.pipeline import gather_or_cancel
from services.vision import scoring, validation
from services.vision.collection_ops import collection_operations
from services.vision.config import VisionSettings
from services.vision.embedding import Embedding, TextEmbeddings, VisionRpc
from services.vision.engine import VisionEngine
from services.vision.inputs import Pooling
from services.vision.streaming import StreamImageEmbeddings

Req = TypeVar("Req")
Res = TypeVar("Res")


def _usage(usage: Usage) -> job_pb2.Usage:
    return job_protos.usage(usage, input_tokens=usage.input_tokens)


def _normalize(message: vision_pb2.EmbedImagesRequest | vision_pb2.EmbedTextsRequest) -> bool:
    return message.normalize if message.HasField("normalize") else True


def _embeddings(vectors: np.ndarray) -> list[vision_pb2.Embedding]:
    return [vision_pb2.Embedding(values=row) for row in vectors.tolist()]


def _images(images: Any) -> tuple[tuple[str, media_pb2.Image], ...]:
    return tuple((f"images[{i}]", image) for i, image in enumerate(images))


# --- EmbedImages / EmbedTexts ----------------------------------------------------------------


@dataclass(frozen=True)
class _EmbedImages:
    images: tuple[tuple[str, media_pb2.Image], ...]
    pooling: Pooling
    normalize: bool


class EmbedImages(VisionRpc[_EmbedImages, np.ndarray]):
    def parse(self, message: vision_pb2.EmbedImagesRequest, call: CallFacts) -> _EmbedImages:
        s = self.settings
        validation.check_count("images", len(message.images), s.max_images_per_request, "image")
        pooling = validation.pooling_of("pooling", message.pooling, s.default_pooling)
        return _EmbedImages(_images(message.images), pooling, _normalize(message))

    async def compose(self, request: _EmbedImages, jobs: Jobs) -> np.ndarray:
        vectors = await self.embedding.of_images(jobs, request.images, request.pooling)
        return scoring.l2_normalize(vectors) if request.normalize else vectors

    async def render(self, result: np.ndarray, usage: Usage) -> vision_pb2.EmbedImagesResponse:
        return vision_pb2.EmbedImagesResponse(
            dimension=result.shape[1], embeddings=_embeddings(result), usage=_usage(usage)
        )


@dataclass(frozen=True)
class _EmbedTexts:
    texts: tuple[str, ...]
    normalize: bool


class EmbedTexts(VisionRpc[_EmbedTexts, TextEmbeddings]):
    def parse(self, message: vision_pb2.EmbedTextsRequest, call: CallFacts) -> _EmbedTexts:
        s = self.settings
        validation.check_count("texts", len(message.texts), s.max_texts_per_request, "text")
        validation.check_texts("texts", message.texts, s.max_text_chars)
        self.embedding.require_text()
        return _EmbedTexts(tuple(message.texts), _normalize(message))

    async def compose(self, request: _EmbedTexts, jobs: Jobs) -> TextEmbeddings:
        result = await self.embedding.of_texts(jobs, request.texts)
        if not request.normalize:
            return result
        return TextEmbeddings(scoring.l2_normalize(result.vectors), result.truncated, result.tokens)

    async def render(self, result: TextEmbeddings, usage: Usage) -> vision_pb2.EmbedTextsResponse:
        return vision_pb2.EmbedTextsResponse(
            dimension=result.vectors.shape[1],
            embeddings=_embeddings(result.vectors),
            truncated=result.truncated,
            usage=_usage(usage),
        )


# --- ComputeSimilarity / Rank ----------------------------------------------------------------


@dataclass(frozen=True)
class _Similarity:
    items: validation.Items  # queries first, then candidates
    queries: int
    pooling: Pooling
    logits: bool
    top_k: int = 0  # Rank's; 0 means every candidate


class _Scoring(VisionRpc[_Similarity, Res]):
    """What ComputeSimilarity and Rank share (Rank is one query and a top_k): the checks after
    the query count, in the order that decides which error a bad request gets, and the scores."""

    def similarity(
        self,
        message: vision_pb2.ComputeSimilarityRequest | vision_pb2.RankRequest,
        queries: Sequence[tuple[str, vision_pb2.VisionInput]],
        top_k: int = 0,
    ) -> _Similarity:
        s = self.settings
        validation.check_count(
            "candidates", len(message.candidates), s.max_items_per_request, "candidate"
        )
        logits = validation.wants_model_logits("metric", message.metric)
        pooling = validation.pooling_of("pooling", message.pooling, s.default_pooling)
        items = validation.Items()
        for name, query in queries:
            items.add(name, query, s.max_text_chars)
        items.extend("candidates", message.candidates, s.max_text_chars)
        if items.texts or logits:
            self.embedding.require_text()
        return _Similarity(items, len(queries), pooling, logits, top_k)

    async def scores(self, request: _Similarity, jobs: Jobs) -> np.ndarray:
        """(queries, candidates) cosines, or the model's logits."""
        vectors = await self.embedding.of_items(jobs, request.items, request.pooling)
        rows = request.queries
        return self.embedding.scores(vectors[:rows], vectors[rows:], request.logits)


class ComputeSimilarity(_Scoring[np.ndarray]):
    def parse(self, message: vision_pb2.ComputeSimilarityRequest, call: CallFacts) -> _Similarity:
        s = self.settings
        validation.check_count("queries", len(message.queries), s.max_items_per_request, "query")
        queries = [(f"queries[{i}]", query) for i, query in enumerate(message.queries)]
        return self.similarity(message, queries)

    async def compose(self, request: _Similarity, jobs: Jobs) -> np.ndarray:
        return await self.scores(request, jobs)

    async def render(
        self, result: np.ndarray, usage: Usage
    ) -> vision_pb2.ComputeSimilarityResponse:
        matrix = vision_pb2.ScoreMatrix(
            rows=result.shape[0], columns=result.shape[1], values=result.ravel().tolist()
        )
        return vision_pb2.ComputeSimilarityResponse(scores=matrix, usage=_usage(usage))


class Rank(_Scoring[list[tuple[int, float]]]):
    def parse(self, message: vision_pb2.RankRequest, call: CallFacts) -> _Similarity:
        return self.similarity(message, [("query", message.query)], message.top_k)

    async def compose(self, request: _Similarity, jobs: Jobs) -> list[tuple[int, float]]:
        scores = (await self.scores(request, jobs))[0]
        return [(i, float(scores[i])) for i in scoring.top_k(scores, request.top_k)]

    async def render(
        self, result: list[tuple[int, float]], usage: Usage
    ) -> vision_pb2.RankResponse:
        return vision_pb2.RankResponse(
            results=[vision_pb2.RankedCandidate(index=i, score=score) for i, score in result],
            usage=_usage(usage),
        )


# --- ClassifyZeroShot ------------------------------------------------------------------------


@dataclass(frozen=True)
class _ZeroShot:
    images: tuple[tuple[str, media_pb2.Image], ...]
    labels: list[str]
    templates: list[str]
    top_k: int


@dataclass(frozen=True)
class _Classified:
    rows: list[list[tuple[int, float]]]  # per image: (label index, score), best first
    labels: list[str]
    activation: str


class ClassifyZeroShot(VisionRpc[_ZeroShot, _Classified]):
    def parse(self, message: vision_pb2.ClassifyZeroShotRequest, call: CallFacts) -> _ZeroShot:
        s = self.settings
        validation.check_count("images", len(message.images), s.max_images_per_request, "image")
        validation.check_count("labels", len(message.labels), s.max_labels, "label")
        validation.check_texts("labels", message.labels, s.max_text_chars, "label")
        templates = validation.templates_of(
            "templates", message.templates, s.max_templates, s.max_text_chars
        )
        self.embedding.require_text()
        return _ZeroShot(_images(message.images), list(message.labels), templates, message.top_k)

    async def compose(self, request: _ZeroShot, jobs: Jobs) -> _Classified:
        engine = self.embedding.engine
        prompts = scoring.expand_templates(request.labels, request.templates)
        image_vectors, text_vectors = await gather_or_cancel(
            self.embedding.of_images(jobs, request.images, self.settings.default_pooling),
            self.embedding.text_vectors(jobs, prompts),
        )
        label_vectors = scoring.label_embeddings(
            text_vectors, len(request.labels), len(request.templates)
        )
        logits = scoring.model_logits(
            scoring.l2_normalize(image_vectors) @ label_vectors.T,
            engine.logit_scale,
            engine.logit_bias,
        )
        sigmoid = engine.activation == "sigmoid"
        probabilities = scoring.sigmoid(logits) if sigmoid else scoring.softmax(logits)
        rows = [
            [(j, float(row[j])) for j in scoring.top_k(row, request.top_k)] for row in probabilities
        ]
        return _Classified(rows, request.labels, "sigmoid" if sigmoid else "softmax")

    async def render(
        self, result: _Classified, usage: Usage
    ) -> vision_pb2.ClassifyZeroShotResponse:
        return vision_pb2.ClassifyZeroShotResponse(
            classifications=[
                vision_pb2.Classification(
                    labels=[
                        vision_pb2.LabelScore(label=result.labels[j], index=j, score=score)
                        for j, score in row
                    ]
                )
                for row in result.rows
            ],
            activation=result.activation,
            usage=_usage(usage),
        )


# --- GetModelInfo ----------------------------------------------------------------------------


class GetModelInfo(Inline):
    def __init__(self, runtime: ServiceRuntime) -> None:
        super().__init__(runtime)
        self.engine = runtime.engine_as(VisionEngine)
        self.settings = runtime.settings_as(VisionSettings)

    async def respond(
        self, message: vision_pb2.GetModelInfoRequest, context: Any
    ) -> vision_pb2.GetModelInfoResponse:
        s = self.settings
        limits = vision_pb2.VisionLimits(
            max_images_per_request=s.max_images_per_request,
            max_texts_per_request=s.max_texts_per_request,
            max_items_per_request=s.max_items_per_request,
            max_labels=s.max_labels,
            max_text_chars=s.max_text_chars,
            max_text_tokens=self.engine.text_context,
            image_size=self.engine.image_size,
            max_images_per_stream=s.max_images_per_stream,
            max_upsert_items=s.max_upsert_items,
        )
        return vision_pb2.GetModelInfoResponse(
            model_info=self.runtime.model_info(),
            limits=limits,
            embedding_dimension=self.engine.dimension,
            supports_text=self.engine.supports_text,
        )


def operations(runtime: ServiceRuntime) -> OperationTable:
    """The table the runtime serves VisionService from (GetJob and CancelJob are its own)."""
    embedding = Embedding(runtime)
    return {
        "EmbedImages": EmbedImages(runtime, embedding),
        "StreamImageEmbeddings": StreamImageEmbeddings(runtime, embedding),
        "EmbedTexts": EmbedTexts(runtime, embedding),
        "ComputeSimilarity": ComputeSimilarity(runtime, embedding),
        "ClassifyZeroShot": ClassifyZeroShot(runtime, embedding),
        "Rank": Rank(runtime, embedding),
        "GetModelInfo": GetModelInfo(runtime),
        **collection_operations(runtime, embedding),
    }
