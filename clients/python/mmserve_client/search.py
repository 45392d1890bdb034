"""Streaming embeds and collections of the vision service: result types, requests and replies.

with VisionClient("127.0.0.1:50053") as vision:
    vision.create_collection("photos", exist_ok=True)
    vectors = vision.embed_many(paths, on_progress=print)
    vision.upsert("photos", ids, vectors=vectors.vectors, metadata=paths_metadata)
    hits = vision.search("photos", text="a red fox", top_k=5)
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np

from mmserve.vision.v1 import vision_pb2

from .events import Accepted, Heartbeat, Queued
from .images import ImageLike, to_image_proto
from .results import Embeddings, Usage
from .wire.common import shared_event, usage
from .wire.vision import POOLING, _choice, images_list


@dataclass(frozen=True)
class EmbeddedChunk:
    """Vectors of the images offset .. offset + len(vectors) - 1 of a streaming embed."""

    job_id: str
    offset: int
    vectors: np.ndarray[Any, Any]


@dataclass(frozen=True)
class EmbedProgress:
    """Images embedded so far, of `total`, and the estimated seconds left."""

    job_id: str
    done: int
    total: int
    eta_seconds: float


@dataclass(frozen=True)
class EmbedDone:
    """A streaming embed finished (last event)."""

    job_id: str
    count: int
    dimension: int
    usage: Usage


EmbedEvent: TypeAlias = Accepted | Queued | Heartbeat | EmbeddedChunk | EmbedProgress | EmbedDone


@dataclass(frozen=True)
class Collection:
    name: str
    dimension: int
    model_id: str
    count: int
    create_time: float


@dataclass(frozen=True)
class StoredItem:
    id: str
    metadata: dict[str, str]
    vector: np.ndarray[Any, Any] | None = None


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float
    metadata: dict[str, str]
    vector: np.ndarray[Any, Any] | None = None


@dataclass(frozen=True)
class SearchResult:
    """Hits best first; `exact` when a selective filter made the service scan the rows."""

    hits: list[SearchHit]
    exact: bool
    usage: Usage


@dataclass(frozen=True)
class Upserted:
    upserted: int
    replaced: int
    usage: Usage


@dataclass(frozen=True)
class Items:
    """Stored items in request order, and the ids that are not stored."""

    items: list[StoredItem]
    missing: list[str] = field(default_factory=list)


# --- streaming embed ---------------------------------------------------------------------


def stream_embed_request(
    images: ImageLike | Iterable[ImageLike],
    chunk_size: int,
    normalize: bool,
    pooling: str | None,
) -> vision_pb2.StreamImageEmbeddingsRequest:
    return vision_pb2.StreamImageEmbeddingsRequest(
        images=images_list(images),
        chunk_size=chunk_size,
        normalize=normalize,
        pooling=_choice(POOLING, pooling, "pooling"),
    )


def embed_event(response: vision_pb2.StreamImageEmbeddingsResponse) -> EmbedEvent | None:
    shared = shared_event(response)
    if shared is not None:
        return shared
    kind = response.WhichOneof("event")
    if kind == "embeddings":
        chunk = response.embeddings
        rows = np.asarray([row.values for row in chunk.embeddings], dtype=np.float32)
        return EmbeddedChunk(response.job_id, chunk.offset, rows.reshape(len(rows), -1))
    if kind == "progress":
        p = response.progress
        return EmbedProgress(response.job_id, p.done, p.total, p.eta_seconds)
    if kind == "done":
        d = response.done
        return EmbedDone(response.job_id, d.count, d.dimension, usage(d.usage))
    return None


def gather_embeddings(
    events: Iterable[EmbedEvent], on_progress: Callable[[int, int], None] | None
) -> Embeddings:
    """The vectors of a streaming embed as one (n, dimension) matrix."""
    chunks: list[np.ndarray[Any, Any]] = []
    for event in events:
        if isinstance(event, EmbeddedChunk):
            chunks.append(event.vectors)
        elif isinstance(event, EmbedProgress) and on_progress is not None:
            on_progress(event.done, event.total)
        elif isinstance(event, EmbedDone):
            vectors = np.concatenate(chunks) if chunks else np.zeros((0, event.dimension))
            return Embeddings(event.job_id, vectors, event.dimension, event.usage)
    raise ValueError("the stream ended before its done event")


async def gather_embeddings_async(
    events: AsyncIterable[EmbedEvent], on_progress: Callable[[int, int], None] | None
) -> Embeddings:
    """gather_embeddings for an asyncio stream (progress reported as it comes)."""
    collected: list[EmbedEvent] = []
    async for event in events:
        if isinstance(event, EmbedProgress) and on_progress is not None:
            on_progress(event.done, event.total)
        else:
            collected.append(event)
    return gather_embeddings(collected, None)


# --- collections -------------------------------------------------------------------------


def collection(message: vision_pb2.Collection) -> Collection:
    return Collection(
        message.name, message.dimension, message.model_id, message.count, message.create_time
    )


def _vector(message: vision_pb2.Embedding, present: bool) -> np.ndarray[Any, Any] | None:
    return np.asarray(message.values, dtype=np.float32) if present else None


def upsert_request(
    name: str,
    ids: Sequence[str],
    *,
    images: Sequence[ImageLike] | None,
    texts: Sequence[str] | None,
    vectors: Any,
    metadata: Sequence[Mapping[str, str]] | None,
    pooling: str | None,
) -> vision_pb2.UpsertItemsRequest:
    """One item per id, from exactly one of images, texts or vectors (same length as ids)."""
    given = [s for s in (images, texts, vectors) if s is not None]
    if len(given) != 1:
        raise ValueError("pass exactly one of images, texts or vectors")
    sources = given[0]
    if len(sources) != len(ids) or (metadata is not None and len(metadata) != len(ids)):
        raise ValueError("ids, the items and metadata must have the same length")
    items = []
    for index, item_id in enumerate(ids):
        item = vision_pb2.ItemInput(id=item_id, metadata=dict(metadata[index]) if metadata else {})
        if images is not None:
            item.image.CopyFrom(to_image_proto(images[index]))
        elif texts is not None:
            item.text = texts[index]
        else:
            item.vector.values.extend(np.asarray(vectors[index], dtype=np.float32).tolist())
        items.append(item)
    return vision_pb2.UpsertItemsRequest(
        collection=name, items=items, pooling=_choice(POOLING, pooling, "pooling")
    )


def upserted(response: vision_pb2.UpsertItemsResponse, job_id: str) -> Upserted:
    return Upserted(response.upserted, response.replaced, usage(response.usage))


def items(response: vision_pb2.GetItemsResponse, job_id: str) -> Items:
    return Items(
        [
            StoredItem(i.id, dict(i.metadata), _vector(i.vector, i.HasField("vector")))
            for i in response.items
        ],
        list(response.missing),
    )


def search_request(
    name: str,
    *,
    text: str | None,
    image: ImageLike | None,
    vector: Any,
    item_id: str | None,
    top_k: int,
    where: Mapping[str, str] | None,
    include_vectors: bool,
    pooling: str | None,
) -> vision_pb2.SearchRequest:
    given = [q for q in (text, image, vector, item_id) if q is not None]
    if len(given) != 1:
        raise ValueError("search with exactly one of text, image, vector or item_id")
    request = vision_pb2.SearchRequest(
        collection=name,
        top_k=top_k,
        filter=dict(where or {}),
        include_vectors=include_vectors,
        pooling=_choice(POOLING, pooling, "pooling"),
    )
    if text is not None:
        request.text = text
    elif image is not None:
        request.image.CopyFrom(to_image_proto(image))
    elif vector is not None:
        request.vector.values.extend(np.asarray(vector, dtype=np.float32).tolist())
    else:
        request.id = item_id or ""
    return request


def search_result(response: vision_pb2.SearchResponse, job_id: str) -> SearchResult:
    return SearchResult(
        [
            SearchHit(h.id, h.score, dict(h.metadata), _vector(h.vector, h.HasField("vector")))
            for h in response.hits
        ],
        response.exact,
        usage(response.usage),
    )
