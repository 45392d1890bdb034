"""The vision client's streaming embed and collections, and `mmserve index` / `search` /
`collections`, against the real vision service on its tiny CLIP."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from mmserve_client import NotFound, VisionClient, aio
from mmserve_client.search import EmbeddedChunk, EmbedDone, EmbedProgress
from tests.clients.helpers import gradient, png, run_cli
from tests.clients.servers import Served

COLORS = [(220, 20, 20), (20, 200, 30), (20, 30, 220), (200, 200, 20), (120, 20, 160)]


@pytest.fixture
def vision(vision_server: Served):
    with VisionClient(vision_server.target, timeout=60) as client:
        yield client


def images() -> list[bytes]:
    return [png(color=c) for c in COLORS] + [gradient(40, 30), gradient(30, 50)]


def test_stream_embed_matches_embed_images(vision: VisionClient) -> None:
    events = list(vision.stream_embed_images(images(), chunk_size=3))
    chunks = [e for e in events if isinstance(e, EmbeddedChunk)]
    assert [c.offset for c in chunks] == [0, 3, 6]
    progress = [e.done for e in events if isinstance(e, EmbedProgress)]
    assert progress == [3, 6, 7]
    assert isinstance(events[-1], EmbedDone)
    seen: list[tuple[int, int]] = []
    gathered = vision.embed_many(
        images(), chunk_size=2, on_progress=lambda d, t: seen.append((d, t))
    )
    assert seen[-1] == (7, 7)
    unary = vision.embed_images(images())
    np.testing.assert_allclose(gathered.vectors, unary.vectors, atol=1e-5)
    np.testing.assert_allclose(
        np.concatenate([c.vectors for c in chunks]), unary.vectors, atol=1e-5
    )


def test_collection_round_trip(vision: VisionClient) -> None:
    name = "sdk-round-trip"
    vision.create_collection(name, exist_ok=True)
    ids = [f"c{i}" for i in range(len(COLORS))]
    result = vision.upsert(
        name,
        ids,
        images=[png(color=c) for c in COLORS],
        metadata=[{"warm": str(c[0] > 150).lower()} for c in COLORS],
    )
    assert result.upserted == len(ids)
    hits = vision.search(name, image=png(color=COLORS[2]), top_k=3)
    assert hits.hits[0].id == "c2"
    warm = vision.search(name, item_id="c0", top_k=5, where={"warm": "true"})
    assert {h.id for h in warm.hits} == {"c3"}
    got = vision.get_items(name, ["c1", "zz"], include_vectors=True)
    assert got.items[0].vector is not None
    assert got.missing == ["zz"]
    vectors = vision.embed_texts(["a red square"]).vectors
    vision.upsert(name, ["t0"], vectors=vectors)
    by_vector = vision.search(name, vector=vectors[0], top_k=1)
    assert by_vector.hits[0].id == "t0"
    assert vision.delete_items(name, ["t0"]) == 1
    assert name in {c.name for c in vision.list_collections()}
    assert vision.delete_collection(name) == len(ids)
    with pytest.raises(NotFound):
        vision.search(name, text="a")


def test_async_client(vision_server: Served) -> None:
    async def run() -> None:
        async with aio.VisionClient(vision_server.target, timeout=60) as client:
            await client.create_collection("sdk-async", exist_ok=True)
            embedded = await client.embed_many(images()[:3])
            await client.upsert("sdk-async", ["a", "b", "c"], vectors=embedded.vectors)
            hits = await client.search("sdk-async", vector=embedded.vectors[1], top_k=1)
            assert hits.hits[0].id == "b"
            await client.delete_collection("sdk-async")

    asyncio.run(run())


def test_cli_index_and_search(vision_server: Served, tmp_path: Path) -> None:
    folder = tmp_path / "gallery"
    (folder / "warm").mkdir(parents=True)
    (folder / "cool").mkdir()
    for color in COLORS:
        place = "warm" if color[0] > 150 else "cool"
        (folder / place / f"{color[0]}-{color[1]}-{color[2]}.png").write_bytes(png(color=color))
    target = ("--target", vision_server.target)
    refused = run_cli("index", str(folder), "-c", "cli-gallery", *target)
    assert refused.code == 1
    assert "--create" in refused.stderr
    done = run_cli(
        "index", str(folder), "-c", "cli-gallery", "--create", "--chunk-size", "2", *target
    )
    assert done.code == 0, done.stderr
    assert "indexed 5 images" in done.stdout
    found = run_cli(
        "--json",
        "search",
        "-c",
        "cli-gallery",
        "--image",
        str(folder / "cool" / "20-30-220.png"),
        "-k",
        "2",
        *target,
    )
    assert found.code == 0, found.stderr
    hits = json.loads(found.stdout)["hits"]
    assert hits[0]["id"] == "cool/20-30-220.png"
    assert hits[0]["metadata"] == {"path": "cool/20-30-220.png"}
    listed = run_cli("collections", *target)
    assert "cli-gallery: 5 items" in listed.stdout
    deleted = run_cli("collections", "--delete", "cli-gallery", *target)
    assert deleted.code == 0, deleted.stderr
