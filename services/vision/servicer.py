"""mmserve.vision.v1.VisionService: protobuf in, plain Python to the engine, protobuf out.

Every RPC is built from two batchable job kinds, so images and texts from all RPCs and all
clients share micro-batches: decode + preprocess on the CPU pool, then `embed_images` /
`embed_texts` jobs; scores are computed here from the embeddings (scoring.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from mmserve.common.v1 import job_pb2, media_pb2
from mmserve.vision.v1 import vision_pb2, vision_pb2_grpc
from services.runtime import job_protos
from services.runtime.app import JobsServicerMixin, ServiceRuntime
from services.runtime.executor import ExpectedJob, JobUsage
from services.runtime.images import ImageLimits
from services.runtime.media import UriPolicy, load_image
from services.vision import scoring, validation
from services.vision.config import VisionSettings
from services.vision.engine import EMBED_IMAGES, EMBED_TEXTS, VisionEngine
from services.vision.inputs import ImageInputs, ImageJob, Pooling, TextInputs

T = TypeVar("T")

# CLIP and DINO processors resize the shortest side to the model's size, so memory and time
# grow with the aspect ratio: a 16384x1 image (a few bytes of PNG) would become gigabytes of
# floats. 200:1 bounds that at ~150 MB and keeps every real photo or panorama.
MAX_ASPECT_RATIO = 200


@dataclass
class _Usage:
    """One RPC's usage over its jobs: the longest queue wait, the summed run time, the
    largest micro-batch (in requests) any of its jobs ran in, and the text tokens."""

    queue_seconds: float = 0.0
    run_seconds: float = 0.0
    batch_size: int = 0
    input_tokens: int = 0

    def add(self, usage: JobUsage) -> None:
        self.queue_seconds = max(self.queue_seconds, usage.queue_seconds)
        self.run_seconds += usage.run_seconds
        self.batch_size = max(self.batch_size, usage.batch_size)

    def proto(self) -> job_pb2.Usage:
        total = JobUsage(self.queue_seconds, self.run_seconds, self.batch_size)
        return job_protos.usage(total, input_tokens=self.input_tokens)


async def _all(*steps: Awaitable[T]) -> list[T]:
    """Runs steps concurrently; the first failure cancels the rest (whose queued or running
    jobs are then cancelled by the runtime) and is raised as itself, not as a group."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class VisionServicer(JobsServicerMixin, vision_pb2_grpc.VisionServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        self.engine: VisionEngine = runtime.engine  # type: ignore[assignment]
        self.settings: VisionSettings = runtime.settings  # type: ignore[assignment]
        self.image_limits = ImageLimits(
            max_pixels=self.settings.max_image_pixels,
            max_side=self.settings.max_image_side,
            max_aspect_ratio=MAX_ASPECT_RATIO,
        )
        self.uri_policy = UriPolicy(tuple(self.settings.allowed_uri_prefixes))

    # --- RPCs ----------------------------------------------------------------------------

    async def EmbedImages(
        self, request: vision_pb2.EmbedImagesRequest, context: Any
    ) -> vision_pb2.EmbedImagesResponse:
        self.runtime.ensure_ready()
        s = self.settings
        validation.check_count("images", len(request.images), s.max_images_per_request, "image")
        pooling = validation.pooling_of("pooling", request.pooling, s.default_pooling)
        usage = _Usage()
        images = [(f"images[{i}]", image) for i, image in enumerate(request.images)]
        vectors = await self._embed_images(context, images, pooling, usage)
        if _normalize(request):
            vectors = scoring.l2_normalize(vectors)
        return vision_pb2.EmbedImagesResponse(
            dimension=vectors.shape[1], embeddings=_embeddings(vectors), usage=usage.proto()
        )

    async def EmbedTexts(
        self, request: vision_pb2.EmbedTextsRequest, context: Any
    ) -> vision_pb2.EmbedTextsResponse:
        self.runtime.ensure_ready()
        s = self.settings
        validation.check_count("texts", len(request.texts), s.max_texts_per_request, "text")
        validation.check_texts("texts", request.texts, s.max_text_chars)
        self._require_text()
        usage = _Usage()
        vectors, inputs = await self._embed_texts(context, request.texts, usage)
        if _normalize(request):
            vectors = scoring.l2_normalize(vectors)
        return vision_pb2.EmbedTextsResponse(
            dimension=vectors.shape[1],
            embeddings=_embeddings(vectors),
            truncated=inputs.truncated,
            usage=usage.proto(),
        )

    async def ComputeSimilarity(
        self, request: vision_pb2.ComputeSimilarityRequest, context: Any
    ) -> vision_pb2.ComputeSimilarityResponse:
        self.runtime.ensure_ready()
        s = self.settings
        validation.check_count("queries", len(request.queries), s.max_items_per_request, "query")
        validation.check_count(
            "candidates", len(request.candidates), s.max_items_per_request, "candidate"
        )
        logits = validation.wants_model_logits("metric", request.metric)
        pooling = validation.pooling_of("pooling", request.pooling, s.default_pooling)
        items = validation.Items()
        items.extend("queries", request.queries, s.max_text_chars)
        items.extend("candidates", request.candidates, s.max_text_chars)
        if items.texts or logits:
            self._require_text()
        usage = _Usage()
        vectors = await self._embed_items(context, items, pooling, usage)
        rows = len(request.queries)
        scores = self._scores(vectors[:rows], vectors[rows:], logits)
        matrix = vision_pb2.ScoreMatrix(
            rows=scores.shape[0], columns=scores.shape[1], values=scores.ravel().tolist()
        )
        return vision_pb2.ComputeSimilarityResponse(scores=matrix, usage=usage.proto())

    async def ClassifyZeroShot(
        self, request: vision_pb2.ClassifyZeroShotRequest, context: Any
    ) -> vision_pb2.ClassifyZeroShotResponse:
        self.runtime.ensure_ready()
        s = self.settings
        validation.check_count("images", len(request.images), s.max_images_per_request, "image")
        validation.check_count("labels", len(request.labels), s.max_labels, "label")
        validation.check_texts("labels", request.labels, s.max_text_chars, "label")
        templates = validation.templates_of(
            "templates", request.templates, s.max_templates, s.max_text_chars
        )
        self._require_text()
        labels = list(request.labels)
        prompts = scoring.expand_templates(labels, templates)
        usage = _Usage()
        images = [(f"images[{i}]", image) for i, image in enumerate(request.images)]
        image_vectors, (text_vectors, _) = await _all(
            self._embed_images(context, images, s.default_pooling, usage),
            self._embed_texts(context, prompts, usage),
        )
        label_vectors = scoring.label_embeddings(text_vectors, len(labels), len(templates))
        logits = scoring.model_logits(
            scoring.l2_normalize(image_vectors) @ label_vectors.T,
            self.engine.logit_scale,
            self.engine.logit_bias,
        )
        sigmoid = self.engine.activation == "sigmoid"
        probabilities = scoring.sigmoid(logits) if sigmoid else scoring.softmax(logits)
        return vision_pb2.ClassifyZeroShotResponse(
            classifications=[
                vision_pb2.Classification(
                    labels=[
                        vision_pb2.LabelScore(label=labels[j], index=j, score=float(row[j]))
                        for j in scoring.top_k(row, request.top_k)
                    ]
                )
                for row in probabilities
            ],
            activation="sigmoid" if sigmoid else "softmax",
            usage=usage.proto(),
        )

    async def Rank(self, request: vision_pb2.RankRequest, context: Any) -> vision_pb2.RankResponse:
        self.runtime.ensure_ready()
        s = self.settings
        validation.check_count(
            "candidates", len(request.candidates), s.max_items_per_request, "candidate"
        )
        logits = validation.wants_model_logits("metric", request.metric)
        pooling = validation.pooling_of("pooling", request.pooling, s.default_pooling)
        items = validation.Items()
        items.add("query", request.query, s.max_text_chars)
        items.extend("candidates", request.candidates, s.max_text_chars)
        if items.texts or logits:
            self._require_text()
        usage = _Usage()
        vectors = await self._embed_items(context, items, pooling, usage)
        scores = self._scores(vectors[:1], vectors[1:], logits)[0]
        return vision_pb2.RankResponse(
            results=[
                vision_pb2.RankedCandidate(index=i, score=float(scores[i]))
                for i in scoring.top_k(scores, request.top_k)
            ],
            usage=usage.proto(),
        )

    async def GetModelInfo(
        self, request: vision_pb2.GetModelInfoRequest, context: Any
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
        )
        return vision_pb2.GetModelInfoResponse(
            model_info=self.runtime.model_info(),
            limits=limits,
            embedding_dimension=self.engine.dimension,
            supports_text=self.engine.supports_text,
        )

    # --- embedding through the executor ------------------------------------------------------

    def _require_text(self) -> None:
        if not self.engine.supports_text:
            raise self.engine.text_unsupported()

    def _prepare_images(self, images: Sequence[tuple[str, media_pb2.Image]]) -> ImageInputs:
        """CPU pool: bytes (or an allowed URI) -> checked RGB images -> processor tensors."""
        decoded = [
            load_image(image, field=name, policy=self.uri_policy, limits=self.image_limits)
            for name, image in images
        ]
        return self.engine.prepare_images(decoded)

    async def _embed_images(
        self,
        context: Any,
        images: Sequence[tuple[str, media_pb2.Image]],
        pooling: Pooling,
        usage: _Usage,
    ) -> np.ndarray:
        """(N, dim) raw image embeddings. A request larger than one forward pass is cut into
        device-sized parts, each queued as soon as it is preprocessed, so the device runs part
        k while the CPU pool prepares part k+1."""
        step = max(1, self.engine.device_batch)
        parts = [images[i : i + step] for i in range(0, len(images), step)]
        # Announced before decoding starts, so a batch the device starts meanwhile waits for
        # these images instead of leaving them to a later, smaller batch.
        expected = [self.runtime.expect_job(EMBED_IMAGES) for _ in parts]
        prepared = [
            asyncio.ensure_future(self.runtime.run_cpu(self._prepare_images, p)) for p in parts
        ]

        async def run(part: asyncio.Future[ImageInputs], announced: ExpectedJob) -> np.ndarray:
            job = ImageJob(await part, pooling)  # a failure here is closed in the finally below
            vectors, job_usage = await self.runtime.run_job(
                context, EMBED_IMAGES, batch_input=job, expected=announced
            )
            usage.add(job_usage)
            return vectors

        try:
            results = await _all(*(run(p, e) for p, e in zip(prepared, expected, strict=True)))
        finally:
            for part in prepared:  # a failed part leaves the others' preprocessing unawaited
                part.cancel()
            for announced in expected:
                announced.close()
            await asyncio.gather(*prepared, return_exceptions=True)
        return results[0] if len(results) == 1 else np.concatenate(results)

    async def _embed_texts(
        self, context: Any, texts: Sequence[str], usage: _Usage
    ) -> tuple[np.ndarray, TextInputs]:
        """(N, dim) raw text embeddings and the tokenized inputs (truncation, token counts)."""
        inputs = await self.runtime.run_cpu(self.engine.prepare_texts, list(texts))
        vectors, job_usage = await self.runtime.run_job(context, EMBED_TEXTS, batch_input=inputs)
        usage.add(job_usage)
        usage.input_tokens += inputs.tokens
        return vectors, inputs

    async def _embed_items(
        self, context: Any, items: validation.Items, pooling: Pooling, usage: _Usage
    ) -> np.ndarray:
        """Unit-length embeddings of mixed items, in request order; images and texts are
        embedded concurrently, each batched with other requests of their kind."""
        steps: list[Awaitable[np.ndarray]] = []
        if items.images:
            steps.append(self._embed_images(context, items.images, pooling, usage))
        if items.texts:
            steps.append(self._texts_only(context, items.texts, usage))
        parts = await _all(*steps)
        vectors = np.zeros((items.count, parts[0].shape[1]), dtype=np.float32)
        rows_of = ([items.image_rows] if items.images else []) + (
            [items.text_rows] if items.texts else []
        )
        for rows, part in zip(rows_of, parts, strict=True):
            vectors[rows] = scoring.l2_normalize(part)
        return vectors

    async def _texts_only(self, context: Any, texts: list[str], usage: _Usage) -> np.ndarray:
        vectors, _ = await self._embed_texts(context, texts, usage)
        return vectors

    def _scores(self, queries: np.ndarray, candidates: np.ndarray, logits: bool) -> np.ndarray:
        """Cosine of unit vectors, or the model's logits from it."""
        cosines = (queries @ candidates.T).astype(np.float32)
        if not logits:
            return cosines
        return scoring.model_logits(cosines, self.engine.logit_scale, self.engine.logit_bias)


def _normalize(request: vision_pb2.EmbedImagesRequest | vision_pb2.EmbedTextsRequest) -> bool:
    return request.normalize if request.HasField("normalize") else True


def _embeddings(vectors: np.ndarray) -> list[vision_pb2.Embedding]:
    return [vision_pb2.Embedding(values=row) for row in vectors.tolist()]
