"""The collection RPCs of VisionService: requests checked on the loop, images and texts embedded
through the shared embedding jobs, the store (SQLite + ANN index) called on the CPU pool.

The store opens on the first collection call, once the model is loaded: a collection records the
model id and dimension it was made with, and this service refuses collections of another model.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np

from mmserve.common.v1 import job_pb2, media_pb2
from mmserve.vision.v1 import vision_pb2
from services.runtime import job_protos
from services.runtime.app import ServiceRuntime
from services.runtime.calls import current_call
from services.runtime.errors import InvalidArgument, Violations
from services.runtime.operations import CallFacts, Inline, Jobs, Usage
from services.vision import scoring, validation
from services.vision.collections.store import (
    NAME_RE,
    CollectionInfo,
    CollectionStore,
    Hit,
    Hits,
    Item,
    Upserted,
)
from services.vision.config import VisionSettings
from services.vision.embedding import Embedding, VisionRpc
from services.vision.engine import VisionEngine
from services.vision.inputs import Pooling

MAX_ID_CHARS = 256
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 256
MAX_TOP_K = 1000
DEFAULT_TOP_K = 10


class Collections:
    """The service's collection store, opened on first use."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        self.engine = runtime.engine_as(VisionEngine)
        self.settings = runtime.settings_as(VisionSettings)
        self._store: CollectionStore | None = None
        self._opening = threading.Lock()

    def store(self) -> CollectionStore:
        with self._opening:
            if self._store is None:
                self._store = CollectionStore(
                    self.settings.data_dir / "collections",
                    self.engine.info().model_id,
                    self.engine.dimension,
                    self.settings.collection_exact_max_vectors,
                )
                self.runtime.on_close(self._store.close)
            return self._store

    async def run(self, method: str, *args: Any) -> Any:
        """A store method on the CPU pool (SQLite and index work never block the loop)."""
        self.runtime.ensure_ready()

        def call() -> Any:
            return getattr(self.store(), method)(*args)

        return await self.runtime.run_cpu(call)


def _owner() -> str:
    call = current_call()
    return call.key_id if call is not None else ""


def _name(field: str, name: str) -> str:
    if not NAME_RE.match(name):
        raise InvalidArgument.for_field(
            field, "1-64 characters of letters, digits, '-', '_' and '.' are required"
        )
    return name


def _metadata(field: str, metadata: Mapping[str, str], found: Violations) -> dict[str, str]:
    if len(metadata) > MAX_METADATA_KEYS:
        found.add(field, f"at most {MAX_METADATA_KEYS} keys")
    for key, value in metadata.items():
        if not 1 <= len(key) <= MAX_METADATA_KEY_CHARS:
            found.add(f"{field}[{key[:32]!r}]", f"keys are 1..{MAX_METADATA_KEY_CHARS} characters")
        if len(value) > MAX_METADATA_VALUE_CHARS:
            found.add(f"{field}[{key[:32]!r}]", f"values are at most {MAX_METADATA_VALUE_CHARS}")
    return dict(metadata)


def _unit_vector(field: str, values: Sequence[float], dimension: int, found: Violations) -> Any:
    if len(values) != dimension:
        found.add(field, f"{len(values)} values; the collection's vectors have {dimension}")
        return None
    vector = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(vector)):
        found.add(field, "values must be finite numbers")
        return None
    norm = float(np.linalg.norm(vector))
    if norm == 0.0 or not math.isfinite(norm):
        found.add(field, "a zero vector has no direction")
        return None
    return (vector / norm).astype(np.float32)


# --- collections -------------------------------------------------------------------------


def _collection(info: CollectionInfo) -> vision_pb2.Collection:
    return vision_pb2.Collection(
        name=info.name,
        dimension=info.dimension,
        model_id=info.model_id,
        count=info.count,
        create_time=info.created,
    )


class CreateCollection(Inline):
    def __init__(self, runtime: ServiceRuntime, collections: Collections) -> None:
        super().__init__(runtime)
        self.collections = collections

    async def respond(
        self, message: vision_pb2.CreateCollectionRequest, context: Any
    ) -> vision_pb2.CreateCollectionResponse:
        name = _name("name", message.name)
        info, created = await self.collections.run("create", _owner(), name, message.exist_ok)
        return vision_pb2.CreateCollectionResponse(collection=_collection(info), created=created)


class DeleteCollection(Inline):
    def __init__(self, runtime: ServiceRuntime, collections: Collections) -> None:
        super().__init__(runtime)
        self.collections = collections

    async def respond(
        self, message: vision_pb2.DeleteCollectionRequest, context: Any
    ) -> vision_pb2.DeleteCollectionResponse:
        name = _name("name", message.name)
        count = await self.collections.run("delete", _owner(), name)
        return vision_pb2.DeleteCollectionResponse(deleted_items=count)


class ListCollections(Inline):
    def __init__(self, runtime: ServiceRuntime, collections: Collections) -> None:
        super().__init__(runtime)
        self.collections = collections

    async def respond(
        self, message: vision_pb2.ListCollectionsRequest, context: Any
    ) -> vision_pb2.ListCollectionsResponse:
        found = await self.collections.run("list", _owner())
        return vision_pb2.ListCollectionsResponse(collections=[_collection(i) for i in found])


# --- items -------------------------------------------------------------------------------


def _ids(field: str, ids: Sequence[str], limit: int) -> list[str]:
    validation.check_count(field, len(ids), limit, "id")
    found = Violations()
    for index, item_id in enumerate(ids):
        if not 1 <= len(item_id) <= MAX_ID_CHARS:
            found.add(f"{field}[{index}]", f"ids are 1..{MAX_ID_CHARS} characters")
    found.raise_if_any()
    return list(ids)


class DeleteItems(Inline):
    def __init__(self, runtime: ServiceRuntime, collections: Collections) -> None:
        super().__init__(runtime)
        self.collections = collections
        self.settings = runtime.settings_as(VisionSettings)

    async def respond(
        self, message: vision_pb2.DeleteItemsRequest, context: Any
    ) -> vision_pb2.DeleteItemsResponse:
        name = _name("collection", message.collection)
        ids = _ids("ids", message.ids, self.settings.max_upsert_items)
        deleted = await self.collections.run("delete_items", _owner(), name, ids)
        return vision_pb2.DeleteItemsResponse(deleted=deleted)


def _embedding(vector: np.ndarray | None) -> vision_pb2.Embedding | None:
    return None if vector is None else vision_pb2.Embedding(values=vector.tolist())


class GetItems(Inline):
    def __init__(self, runtime: ServiceRuntime, collections: Collections) -> None:
        super().__init__(runtime)
        self.collections = collections
        self.settings = runtime.settings_as(VisionSettings)

    async def respond(
        self, message: vision_pb2.GetItemsRequest, context: Any
    ) -> vision_pb2.GetItemsResponse:
        name = _name("collection", message.collection)
        ids = _ids("ids", message.ids, self.settings.max_upsert_items)
        items: list[Item]
        items, missing = await self.collections.run(
            "get", _owner(), name, ids, message.include_vectors
        )
        return vision_pb2.GetItemsResponse(
            items=[
                vision_pb2.StoredItem(
                    id=item.id, metadata=item.metadata, vector=_embedding(item.vector)
                )
                for item in items
            ],
            missing=missing,
        )


Source = Literal["image", "text", "vector"]


@dataclass(frozen=True)
class _Upsert:
    collection: str
    ids: list[str]
    sources: list[Source]
    images: list[tuple[str, media_pb2.Image]]
    texts: list[str]
    vectors: list[np.ndarray]
    metadata: list[dict[str, str]]
    pooling: Pooling


class UpsertItems(VisionRpc[_Upsert, Upserted]):
    def __init__(
        self, runtime: ServiceRuntime, embedding: Embedding, collections: Collections
    ) -> None:
        super().__init__(runtime, embedding)
        self.collections = collections

    def parse(self, message: vision_pb2.UpsertItemsRequest, call: CallFacts) -> _Upsert:
        s = self.settings
        name = _name("collection", message.collection)
        validation.check_count("items", len(message.items), s.max_upsert_items, "item")
        pooling = validation.pooling_of("pooling", message.pooling, s.default_pooling)
        dimension = self.embedding.engine.dimension
        found = Violations()
        seen: set[str] = set()
        request = _Upsert(name, [], [], [], [], [], [], pooling)
        for index, item in enumerate(message.items):
            field = f"items[{index}]"
            if not 1 <= len(item.id) <= MAX_ID_CHARS:
                found.add(f"{field}.id", f"ids are 1..{MAX_ID_CHARS} characters")
            elif item.id in seen:
                found.add(f"{field}.id", f"id {item.id!r} appears twice in the request")
            seen.add(item.id)
            request.ids.append(item.id)
            request.metadata.append(_metadata(f"{field}.metadata", item.metadata, found))
            source = item.WhichOneof("source")
            if source == "image":
                request.images.append((f"{field}.image", item.image))
            elif source == "text":
                validation.check_text(f"{field}.text", item.text, s.max_text_chars)
                request.texts.append(item.text)
            elif source == "vector":
                vector = _unit_vector(
                    f"{field}.vector.values", item.vector.values, dimension, found
                )
                request.vectors.append(vector)
            else:
                found.add(field, "one of image, text or vector is required")
                continue
            request.sources.append(source)
        found.raise_if_any()
        if request.texts:
            self.embedding.require_text()
        return request

    async def compose(self, request: _Upsert, jobs: Jobs) -> Upserted:
        owner = _owner()
        # A missing collection or another model's fails before any embedding is paid for.
        await self.collections.run("check", owner, request.collection)
        images: np.ndarray | None = None
        texts: np.ndarray | None = None
        if request.images:
            raw = await self.embedding.of_images(jobs, request.images, request.pooling)
            images = scoring.l2_normalize(raw)
        if request.texts:
            texts = scoring.l2_normalize(await self.embedding.text_vectors(jobs, request.texts))
        rows: list[np.ndarray] = []
        cursors = {"image": 0, "text": 0, "vector": 0}
        for source in request.sources:
            at = cursors[source]
            cursors[source] += 1
            if source == "image":
                assert images is not None
                rows.append(images[at])
            elif source == "text":
                assert texts is not None
                rows.append(texts[at])
            else:
                rows.append(request.vectors[at])
        return await self.collections.run(
            "upsert",
            owner,
            request.collection,
            request.ids,
            np.stack(rows).astype(np.float32),
            request.metadata,
        )

    async def render(self, result: Upserted, usage: Usage) -> vision_pb2.UpsertItemsResponse:
        return vision_pb2.UpsertItemsResponse(
            upserted=result.upserted, replaced=result.replaced, usage=_usage(usage)
        )


def _usage(usage: Usage) -> job_pb2.Usage:
    return job_protos.usage(usage, input_tokens=usage.input_tokens)


# --- search ------------------------------------------------------------------------------


QueryKind = Literal["text", "image", "vector", "id"]


@dataclass(frozen=True)
class _Search:
    collection: str
    kind: QueryKind
    text: str
    image: media_pb2.Image | None
    vector: np.ndarray | None
    item_id: str
    top_k: int
    where: dict[str, str]
    with_vectors: bool
    pooling: Pooling


class Search(VisionRpc[_Search, Hits]):
    def __init__(
        self, runtime: ServiceRuntime, embedding: Embedding, collections: Collections
    ) -> None:
        super().__init__(runtime, embedding)
        self.collections = collections

    def parse(self, message: vision_pb2.SearchRequest, call: CallFacts) -> _Search:
        s = self.settings
        name = _name("collection", message.collection)
        if message.top_k > MAX_TOP_K:
            raise InvalidArgument.for_field("top_k", f"at most {MAX_TOP_K}")
        pooling = validation.pooling_of("pooling", message.pooling, s.default_pooling)
        found = Violations()
        where = _metadata("filter", message.filter, found)
        kind = message.WhichOneof("query")
        vector = None
        if kind is None:
            found.add("query", "one of text, image, vector or id is required")
        elif kind == "text":
            validation.check_text("text", message.text, s.max_text_chars)
            self.embedding.require_text()
        elif kind == "vector":
            vector = _unit_vector(
                "vector.values", message.vector.values, self.embedding.engine.dimension, found
            )
        elif kind == "id" and not 1 <= len(message.id) <= MAX_ID_CHARS:
            found.add("id", f"ids are 1..{MAX_ID_CHARS} characters")
        found.raise_if_any()
        assert kind is not None
        return _Search(
            collection=name,
            kind=cast(QueryKind, kind),
            text=message.text,
            image=message.image if kind == "image" else None,
            vector=vector,
            item_id=message.id,
            top_k=message.top_k or DEFAULT_TOP_K,
            where=where,
            with_vectors=message.include_vectors,
            pooling=pooling,
        )

    async def query_vector(self, request: _Search, jobs: Jobs, owner: str) -> np.ndarray:
        if request.kind == "text":
            vectors = await self.embedding.text_vectors(jobs, [request.text])
        elif request.kind == "image":
            assert request.image is not None
            vectors = await self.embedding.of_images(
                jobs, [("image", request.image)], request.pooling
            )
        elif request.kind == "vector":
            assert request.vector is not None
            return request.vector
        else:
            return await self.collections.run(
                "vector_of", owner, request.collection, request.item_id, "id"
            )
        return scoring.l2_normalize(vectors)[0]

    async def compose(self, request: _Search, jobs: Jobs) -> Hits:
        owner = _owner()
        await self.collections.run("check", owner, request.collection)
        query = await self.query_vector(request, jobs, owner)
        exclude = request.item_id if request.kind == "id" else None
        return await self.collections.run(
            "search",
            owner,
            request.collection,
            query,
            request.top_k,
            request.where,
            request.with_vectors,
            exclude,
        )

    async def render(self, result: Hits, usage: Usage) -> vision_pb2.SearchResponse:
        return vision_pb2.SearchResponse(
            hits=[_hit(hit) for hit in result.hits], exact=result.exact, usage=_usage(usage)
        )


def _hit(hit: Hit) -> vision_pb2.SearchHit:
    return vision_pb2.SearchHit(
        id=hit.id, score=hit.score, metadata=hit.metadata, vector=_embedding(hit.vector)
    )


def collection_operations(runtime: ServiceRuntime, embedding: Embedding) -> dict[str, Any]:
    collections = Collections(runtime)
    return {
        "CreateCollection": CreateCollection(runtime, collections),
        "DeleteCollection": DeleteCollection(runtime, collections),
        "ListCollections": ListCollections(runtime, collections),
        "UpsertItems": UpsertItems(runtime, embedding, collections),
        "DeleteItems": DeleteItems(runtime, collections),
        "GetItems": GetItems(runtime, collections),
        "Search": Search(runtime, embedding, collections),
    }
