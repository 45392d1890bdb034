"""The two device operations every vision RPC is made of, and the embedding steps they share.

Images and texts from all RPCs and all clients meet in two batchable job kinds, `embed_images`
and `embed_texts`, so they share micro-batches: a request is cut into parts of at most
`max_device_batch` items, each part is decoded and preprocessed (or tokenized) on the
CPU pool and queued as soon as it is ready, and the executor runs the parts of many requests in
one forward pass. Scores are computed from the embeddings on the loop (scoring.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from mmserve.common.v1 import media_pb2
from services.runtime.app import ServiceRuntime
from services.runtime.executor import BatchSpec, JobContext
from services.runtime.operations import BatchedOperation, CallFacts, ComposedOperation, Jobs
from services.runtime.pipeline import gather_or_cancel
from services.vision import scoring, validation
from services.vision.config import VisionSettings
from services.vision.engine import VisionEngine
from services.vision.inputs import ImageJob, Pooling, TextInputs

T = TypeVar("T")
Req = TypeVar("Req")
Prep = TypeVar("Prep")
Res = TypeVar("Res")


@dataclass(frozen=True)
class ImageRequest:
    """Images to embed, each with the request field it came from (errors name it)."""

    images: tuple[tuple[str, media_pb2.Image], ...]
    pooling: Pooling


@dataclass(frozen=True)
class TextRequest:
    texts: tuple[str, ...]


@dataclass(frozen=True)
class TextEmbeddings:
    """Raw text embeddings, which texts were cut to the model's context, and their tokens."""

    vectors: np.ndarray
    truncated: list[bool]
    tokens: int


def _parts(items: Sequence[T], size: int) -> list[Sequence[T]]:
    step = max(1, size)
    return [items[i : i + step] for i in range(0, len(items), step)]


def _halves(items: tuple[T, ...]) -> list[tuple[T, ...]]:
    """Two halves of a part that ran out of memory alone; none for a single item."""
    if len(items) < 2:
        return []
    middle = (len(items) + 1) // 2
    return [items[:middle], items[middle:]]


class _DeviceOperation(BatchedOperation[Req, Prep, Res]):
    """What both device operations share: the typed engine and settings, and no parse (the
    RPCs parse their own messages and submit these operations' jobs through `jobs.run`)."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        super().__init__(runtime)
        self.engine = runtime.engine_as(VisionEngine)
        self.settings = runtime.settings_as(VisionSettings)

    def parse(self, message: Any, call: CallFacts) -> Req:
        raise TypeError(f"{type(self).__name__} is not an RPC; the vision RPCs submit its jobs")


class ImageEmbedding(_DeviceOperation[ImageRequest, ImageJob, np.ndarray]):
    """Images -> (N, dim) raw embeddings, in request order."""

    kind = "embed_images"

    def split(self, request: ImageRequest) -> list[ImageRequest]:
        return [
            ImageRequest(tuple(part), request.pooling)
            for part in _parts(request.images, self.settings.max_device_batch)
        ]

    def halve(self, request: ImageRequest) -> list[ImageRequest]:
        return [ImageRequest(half, request.pooling) for half in _halves(request.images)]

    def prepare(self, request: ImageRequest) -> ImageJob:
        """CPU pool: bytes (or an allowed URI) -> checked RGB images -> processor tensors (or,
        when the engine preprocesses in the batch, the decoded images)."""
        decoded = [self.runtime.load_image(image, field) for field, image in request.images]
        return ImageJob(self.engine.prepare_images(decoded), request.pooling)

    def batch_spec(self) -> BatchSpec:
        s = self.settings
        return BatchSpec(
            s.max_batch_size, s.max_batch_wait_ms, s.max_arrival_wait_ms, s.max_return_wait_ms
        )

    def run_batch(self, prepared: list[ImageJob], contexts: list[JobContext]) -> list[np.ndarray]:
        return self.engine.embed_images_batch(prepared)

    def merge(self, results: list[np.ndarray]) -> np.ndarray:
        return results[0] if len(results) == 1 else np.concatenate(results)


class TextEmbedding(_DeviceOperation[TextRequest, TextInputs, TextEmbeddings]):
    """Texts -> (N, dim) raw embeddings with their truncation flags and token count."""

    kind = "embed_texts"

    def split(self, request: TextRequest) -> list[TextRequest]:
        parts = _parts(request.texts, self.settings.max_device_batch)
        return [TextRequest(tuple(part)) for part in parts]

    def halve(self, request: TextRequest) -> list[TextRequest]:
        return [TextRequest(half) for half in _halves(request.texts)]

    def prepare(self, request: TextRequest) -> TextInputs:
        return self.engine.prepare_texts(list(request.texts))

    def batch_spec(self) -> BatchSpec | None:
        if not self.engine.supports_text:
            return None  # an image-only model: no text job is ever submitted
        return BatchSpec(self.settings.max_batch_size, self.settings.max_batch_wait_ms)

    def run_batch(
        self, prepared: list[TextInputs], contexts: list[JobContext]
    ) -> list[TextEmbeddings]:
        vectors = self.engine.embed_texts_batch(prepared)
        return [
            TextEmbeddings(rows, list(inputs.truncated), inputs.tokens)
            for rows, inputs in zip(vectors, prepared, strict=True)
        ]

    def merge(self, results: list[TextEmbeddings]) -> TextEmbeddings:
        if len(results) == 1:
            return results[0]
        return TextEmbeddings(
            np.concatenate([part.vectors for part in results]),
            [flag for part in results for flag in part.truncated],
            sum(part.tokens for part in results),
        )


class Embedding:
    """The embedding steps the RPCs compose, over the two shared device operations."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.engine = runtime.engine_as(VisionEngine)
        self.images = ImageEmbedding(runtime)
        self.texts = TextEmbedding(runtime)

    def require_text(self) -> None:
        if not self.engine.supports_text:
            raise self.engine.text_unsupported()

    async def of_images(
        self, jobs: Jobs, images: Sequence[tuple[str, media_pb2.Image]], pooling: Pooling
    ) -> np.ndarray:
        """(N, dim) raw image embeddings."""
        return await jobs.run(self.images, ImageRequest(tuple(images), pooling))

    async def of_texts(self, jobs: Jobs, texts: Sequence[str]) -> TextEmbeddings:
        """(N, dim) raw text embeddings; their tokens count in the call's usage."""
        result = await jobs.run(self.texts, TextRequest(tuple(texts)))
        jobs.usage.input_tokens += result.tokens
        return result

    async def text_vectors(self, jobs: Jobs, texts: Sequence[str]) -> np.ndarray:
        return (await self.of_texts(jobs, texts)).vectors

    async def of_items(self, jobs: Jobs, items: validation.Items, pooling: Pooling) -> np.ndarray:
        """Unit-length embeddings of mixed items, in request order; images and texts are
        embedded concurrently, each batched with other requests of their kind."""
        steps: list[Awaitable[np.ndarray]] = []
        rows_of: list[list[int]] = []
        if items.images:
            steps.append(self.of_images(jobs, items.images, pooling))
            rows_of.append(items.image_rows)
        if items.texts:
            steps.append(self.text_vectors(jobs, items.texts))
            rows_of.append(items.text_rows)
        parts = await gather_or_cancel(*steps)
        vectors = np.zeros((items.count, parts[0].shape[1]), dtype=np.float32)
        for rows, part in zip(rows_of, parts, strict=True):
            vectors[rows] = scoring.l2_normalize(part)
        return vectors

    def scores(self, queries: np.ndarray, candidates: np.ndarray, logits: bool) -> np.ndarray:
        """Cosine of unit vectors, or the model's logits from it."""
        cosines = (queries @ candidates.T).astype(np.float32)
        if not logits:
            return cosines
        return scoring.model_logits(cosines, self.engine.logit_scale, self.engine.logit_bias)


class VisionRpc(ComposedOperation[Req, Res]):
    """An RPC built from the shared embedding jobs."""

    def __init__(self, runtime: ServiceRuntime, embedding: Embedding) -> None:
        super().__init__(runtime)
        self.embedding = embedding
        self.settings = runtime.settings_as(VisionSettings)

    def device_operations(self) -> tuple[BatchedOperation[Any, Any, Any], ...]:
        return (self.embedding.images, self.embedding.texts)
