"""Collections through real vision servers on the tiny CLIP: create/list/delete, upsert of
images, texts and vectors, get, search by text, image, vector and stored id with filters,
ownership by API key, persistence across restarts and a SIGKILL, and another model refused."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import pytest_asyncio

from mmserve.vision.v1 import vision_pb2, vision_pb2_grpc
from tests.support.servers import start_process, wait_for_health
from tests.vision.helpers import (
    ATOL,
    Reference,
    Served,
    image_pb,
    noise_image,
    served,
    unit,
    violated_fields,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

IMAGES = [noise_image(500 + seed, (40, 36 + seed % 5)) for seed in range(12)]
KEYS = "alice:sk-alice-77a1,bob:sk-bob-0c3e"
ALICE = (("authorization", "Bearer sk-alice-77a1"),)
BOB = (("authorization", "Bearer sk-bob-0c3e"),)


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference("clip")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vision-data")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def clip(data_dir: Path) -> AsyncIterator[Served]:
    async with served("builtin:clip", "--data-dir", str(data_dir)) as srv:
        yield srv


def item(item_id: str, **source) -> vision_pb2.ItemInput:
    metadata = source.pop("metadata", {})
    return vision_pb2.ItemInput(id=item_id, metadata=metadata, **source)


async def fresh(stub, name: str, metadata=()) -> vision_pb2.Collection:
    """An empty collection of that name (deleted first when an earlier test left one)."""
    listed = await stub.ListCollections(
        vision_pb2.ListCollectionsRequest(), metadata=metadata, timeout=10
    )
    if name in [c.name for c in listed.collections]:
        await stub.DeleteCollection(
            vision_pb2.DeleteCollectionRequest(name=name), metadata=metadata, timeout=10
        )
    reply = await stub.CreateCollection(
        vision_pb2.CreateCollectionRequest(name=name), metadata=metadata, timeout=10
    )
    assert reply.created
    return reply.collection


async def test_create_list_delete(clip: Served, reference) -> None:
    stub = clip.stub
    created = await fresh(stub, "photos")
    assert created.dimension == reference.model.config.projection_dim
    assert created.model_id.startswith("builtin:clip")
    assert created.count == 0
    again = await stub.CreateCollection(
        vision_pb2.CreateCollectionRequest(name="photos", exist_ok=True), timeout=10
    )
    assert not again.created
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.CreateCollection(vision_pb2.CreateCollectionRequest(name="photos"), timeout=10)
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
    names = [
        c.name
        for c in (await stub.ListCollections(vision_pb2.ListCollectionsRequest())).collections
    ]
    assert "photos" in names
    await stub.DeleteCollection(vision_pb2.DeleteCollectionRequest(name="photos"), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.DeleteCollection(vision_pb2.DeleteCollectionRequest(name="photos"), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_upsert_get_and_replace(clip: Served, reference) -> None:
    stub = clip.stub
    await fresh(stub, "mixed")
    vector = np.arange(1, reference.model.config.projection_dim + 1, dtype=np.float32)
    reply = await stub.UpsertItems(
        vision_pb2.UpsertItemsRequest(
            collection="mixed",
            items=[
                item("img-0", image=image_pb(IMAGES[0]), metadata={"kind": "image"}),
                item("txt-0", text="a red fox", metadata={"kind": "text"}),
                item("vec-0", vector=vision_pb2.Embedding(values=vector.tolist())),
                item("img-1", image=image_pb(IMAGES[1]), metadata={"kind": "image"}),
            ],
        ),
        timeout=60,
    )
    assert (reply.upserted, reply.replaced) == (4, 0)
    got = await stub.GetItems(
        vision_pb2.GetItemsRequest(
            collection="mixed", ids=["img-1", "nope", "vec-0", "txt-0"], include_vectors=True
        ),
        timeout=10,
    )
    assert [i.id for i in got.items] == ["img-1", "vec-0", "txt-0"]
    assert list(got.missing) == ["nope"]
    assert dict(got.items[0].metadata) == {"kind": "image"}
    np.testing.assert_allclose(
        got.items[0].vector.values, unit(reference.images([IMAGES[1]]))[0], atol=ATOL
    )
    np.testing.assert_allclose(
        got.items[1].vector.values, vector / np.linalg.norm(vector), atol=1e-6
    )
    np.testing.assert_allclose(
        got.items[2].vector.values, unit(reference.texts(["a red fox"]))[0], atol=ATOL
    )
    # The same id again replaces the item.
    reply = await stub.UpsertItems(
        vision_pb2.UpsertItemsRequest(
            collection="mixed",
            items=[item("img-0", image=image_pb(IMAGES[2]), metadata={"kind": "swapped"})],
        ),
        timeout=60,
    )
    assert (reply.upserted, reply.replaced) == (1, 1)
    listed = (await stub.ListCollections(vision_pb2.ListCollectionsRequest())).collections
    assert next(c for c in listed if c.name == "mixed").count == 4
    deleted = await stub.DeleteItems(
        vision_pb2.DeleteItemsRequest(collection="mixed", ids=["txt-0", "nope"]), timeout=10
    )
    assert deleted.deleted == 1


async def gallery(stub) -> None:
    await fresh(stub, "gallery")
    items = [
        item(
            f"img-{i}",
            image=image_pb(image),
            metadata={"parity": "even" if i % 2 == 0 else "odd", "n": str(i)},
        )
        for i, image in enumerate(IMAGES)
    ]
    await stub.UpsertItems(
        vision_pb2.UpsertItemsRequest(collection="gallery", items=items), timeout=60
    )


def exact_order(reference: Reference, query: np.ndarray, rows: list[int]) -> list[str]:
    matrix = unit(reference.images([IMAGES[i] for i in rows]))
    scores = matrix @ query
    return [f"img-{rows[j]}" for j in np.argsort(-scores)]


async def test_search_by_image_text_vector_and_id(clip: Served, reference) -> None:
    stub = clip.stub
    await gallery(stub)
    every = list(range(len(IMAGES)))
    by_image = await stub.Search(
        vision_pb2.SearchRequest(collection="gallery", image=image_pb(IMAGES[3]), top_k=5),
        timeout=30,
    )
    assert by_image.hits[0].id == "img-3"
    assert by_image.hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.id for h in by_image.hits] == exact_order(
        reference, unit(reference.images([IMAGES[3]]))[0], every
    )[:5]
    text_query = unit(reference.texts(["a photo of a cat"]))[0]
    by_text = await stub.Search(
        vision_pb2.SearchRequest(collection="gallery", text="a photo of a cat", top_k=4), timeout=30
    )
    assert [h.id for h in by_text.hits] == exact_order(reference, text_query, every)[:4]
    by_vector = await stub.Search(
        vision_pb2.SearchRequest(
            collection="gallery",
            vector=vision_pb2.Embedding(values=(text_query * 3).tolist()),
            top_k=4,
        ),
        timeout=30,
    )
    assert [h.id for h in by_vector.hits] == [h.id for h in by_text.hits]
    np.testing.assert_allclose(
        [h.score for h in by_vector.hits], [h.score for h in by_text.hits], atol=1e-4
    )
    by_id = await stub.Search(
        vision_pb2.SearchRequest(collection="gallery", id="img-5", top_k=3, include_vectors=True),
        timeout=30,
    )
    assert "img-5" not in [h.id for h in by_id.hits]
    assert len(by_id.hits) == 3
    assert len(by_id.hits[0].vector.values) == reference.model.config.projection_dim


async def test_filters_and_exact_fallback(clip: Served, reference) -> None:
    stub = clip.stub
    await gallery(stub)
    query = image_pb(IMAGES[0])
    odd = await stub.Search(
        vision_pb2.SearchRequest(
            collection="gallery", image=query, top_k=3, filter={"parity": "odd"}
        ),
        timeout=30,
    )
    assert len(odd.hits) == 3
    assert all(h.metadata["parity"] == "odd" for h in odd.hits)
    expected = exact_order(reference, unit(reference.images([IMAGES[0]]))[0], list(range(1, 12, 2)))
    assert [h.id for h in odd.hits] == expected[:3]
    one = await stub.Search(
        vision_pb2.SearchRequest(collection="gallery", image=query, top_k=3, filter={"n": "7"}),
        timeout=30,
    )
    assert [h.id for h in one.hits] == ["img-7"]
    none = await stub.Search(
        vision_pb2.SearchRequest(collection="gallery", image=query, top_k=3, filter={"n": "99"}),
        timeout=30,
    )
    assert list(none.hits) == []


@pytest.mark.parametrize(
    ("call", "request_", "field"),
    [
        ("CreateCollection", vision_pb2.CreateCollectionRequest(name="bad name!"), "name"),
        ("UpsertItems", vision_pb2.UpsertItemsRequest(collection="gallery"), "items"),
        (
            "UpsertItems",
            vision_pb2.UpsertItemsRequest(
                collection="gallery", items=[vision_pb2.ItemInput(id="x")]
            ),
            "items[0]",
        ),
        (
            "UpsertItems",
            vision_pb2.UpsertItemsRequest(
                collection="gallery",
                items=[item("x", vector=vision_pb2.Embedding(values=[1.0, 2.0]))],
            ),
            "items[0].vector.values",
        ),
        (
            "UpsertItems",
            vision_pb2.UpsertItemsRequest(
                collection="gallery", items=[item("x", text="a"), item("x", text="b")]
            ),
            "items[1].id",
        ),
        ("Search", vision_pb2.SearchRequest(collection="gallery"), "query"),
        ("Search", vision_pb2.SearchRequest(collection="gallery", text="a", top_k=5000), "top_k"),
    ],
    ids=["name", "no-items", "no-source", "dimension", "duplicate-id", "no-query", "top-k"],
)
async def test_bad_requests_name_the_field(clip: Served, call: str, request_, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await getattr(clip.stub, call)(request_, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error.value) == [field]


async def test_unknown_collection_and_item(clip: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clip.stub.Search(vision_pb2.SearchRequest(collection="nowhere", text="a"), timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    await gallery(clip.stub)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clip.stub.Search(
            vision_pb2.SearchRequest(collection="gallery", id="ghost"), timeout=30
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_collections_belong_to_their_key(tmp_path: Path) -> None:
    async with served("builtin:clip", "--data-dir", str(tmp_path), "--api-keys", KEYS) as srv:
        await srv.stub.CreateCollection(
            vision_pb2.CreateCollectionRequest(name="private"), metadata=ALICE, timeout=10
        )
        mine = await srv.stub.ListCollections(vision_pb2.ListCollectionsRequest(), metadata=ALICE)
        theirs = await srv.stub.ListCollections(vision_pb2.ListCollectionsRequest(), metadata=BOB)
        assert [c.name for c in mine.collections] == ["private"]
        assert list(theirs.collections) == []
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await srv.stub.Search(
                vision_pb2.SearchRequest(collection="private", text="a"), metadata=BOB, timeout=30
            )
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        # Bob may have a collection of the same name: names are per key.
        await srv.stub.CreateCollection(
            vision_pb2.CreateCollectionRequest(name="private"), metadata=BOB, timeout=10
        )


async def test_another_model_is_refused(tmp_path: Path) -> None:
    async with served("builtin:clip", "--data-dir", str(tmp_path)) as srv:
        await srv.stub.CreateCollection(vision_pb2.CreateCollectionRequest(name="clip-made"))
    async with served("builtin:dinov2", "--data-dir", str(tmp_path)) as srv:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await srv.stub.Search(
                vision_pb2.SearchRequest(collection="clip-made", image=image_pb(IMAGES[0])),
                timeout=30,
            )
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "builtin:clip" in (error.value.details() or "")


async def _process(tmp_path: Path, log: str):
    server = start_process(
        "services.vision",
        ["--model", "builtin:clip", "--data-dir", str(tmp_path / "data")],
        tmp_path / log,
    )
    channel = grpc.aio.insecure_channel(server.target)
    await wait_for_health(channel, 1, timeout=120)
    return server, channel, vision_pb2_grpc.VisionServiceStub(channel)


def vector_items(start: int, count: int, dimension: int) -> list[vision_pb2.ItemInput]:
    rng = np.random.default_rng(start)
    rows = rng.standard_normal((count, dimension))
    return [
        item(
            f"v-{start + i}",
            vector=vision_pb2.Embedding(values=row.tolist()),
            metadata={"batch": str(start)},
        )
        for i, row in enumerate(rows)
    ]


async def test_acknowledged_items_survive_a_sigkill_mid_upsert(tmp_path: Path) -> None:
    server, channel, stub = await _process(tmp_path, "first.log")
    try:
        await stub.CreateCollection(vision_pb2.CreateCollectionRequest(name="durable"))
        info = await stub.GetModelInfo(vision_pb2.GetModelInfoRequest())
        dim = info.embedding_dimension
        acknowledged = 0
        for start in range(0, 600, 200):
            await stub.UpsertItems(
                vision_pb2.UpsertItemsRequest(
                    collection="durable", items=vector_items(start, 200, dim)
                ),
                timeout=60,
            )
            acknowledged += 200
        # One more upsert in flight when the process dies.
        in_flight = asyncio.ensure_future(
            stub.UpsertItems(
                vision_pb2.UpsertItemsRequest(
                    collection="durable", items=vector_items(600, 1000, dim)
                ),
                timeout=60,
            )
        )
        await asyncio.sleep(0.02)
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=30)
        # Usually cut off; an upsert fast enough to be answered first was acknowledged and
        # must have survived like the others.
        answered = True
        try:
            await in_flight
        except grpc.aio.AioRpcError:
            answered = False
    finally:
        await channel.close()
        server.stop()
    server, channel, stub = await _process(tmp_path, "second.log")
    try:
        listed = (await stub.ListCollections(vision_pb2.ListCollectionsRequest())).collections
        count = next(c.count for c in listed if c.name == "durable")
        assert count in (acknowledged, acknowledged + 1000)  # the batch is all or nothing
        if answered:
            assert count == acknowledged + 1000
        probe = vector_items(200, 1, dim)[0]
        hits = await stub.Search(
            vision_pb2.SearchRequest(collection="durable", vector=probe.vector, top_k=1), timeout=30
        )
        assert hits.hits[0].id == "v-200"
        assert hits.hits[0].score == pytest.approx(1.0, abs=1e-4)
    finally:
        await channel.close()
        server.stop()


async def test_a_restart_keeps_collections_and_rebuilds_a_lost_index(tmp_path: Path) -> None:
    # A threshold of 0 puts every collection on the graph index, the one with a file to tear.
    graph = ("--data-dir", str(tmp_path), "--collection-exact-max-vectors", "0")
    async with served("builtin:clip", *graph) as srv:
        await srv.stub.CreateCollection(vision_pb2.CreateCollectionRequest(name="kept"))
        dim = (await srv.stub.GetModelInfo(vision_pb2.GetModelInfoRequest())).embedding_dimension
        await srv.stub.UpsertItems(
            vision_pb2.UpsertItemsRequest(collection="kept", items=vector_items(0, 300, dim)),
            timeout=60,
        )
    indexes = list((tmp_path / "collections" / "indexes").glob("*.usearch"))
    assert len(indexes) == 1  # saved on a clean stop
    indexes[0].write_bytes(b"torn")
    async with served("builtin:clip", *graph) as srv:
        probe = vector_items(0, 300, dim)[123]
        hits = await srv.stub.Search(
            vision_pb2.SearchRequest(collection="kept", vector=probe.vector, top_k=1), timeout=30
        )
        assert hits.hits[0].id == "v-123"
