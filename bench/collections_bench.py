"""Collections benchmark: the vector index alone, then through a real vision service.

1. Index: N unit vectors of the model's dimension (100,000 x 512 by default) in the collection
   store, random (uniform directions: the worst case for any graph index) and clustered (around
   1,000 centres, like real embeddings), with each index: "flat" (the full int8 scan the store
   uses up to its threshold) and "hnsw" (the graph above it). Recall@10 of Search against
   exact search for "near" queries (a stored vector plus noise) and "uniform"/"unseen" ones
   (fresh vectors of the same distribution); single-query latency p50/p99; upsert throughput;
   time to reopen the collection. The load average is printed beside the figures.
2. Served: a vision service on its built-in CLIP (or --model): M images (640x480 JPEGs) embedded
   through StreamImageEmbeddings and upserted, against the same work in-process (the model card's
   processor + get_image_features at the service's chunk size); then text-to-image Search
   latency at 1 client through gRPC.

    python -m bench.collections_bench                       # both parts, default sizes
    python -m bench.collections_bench --skip-served --index-kinds flat   # seconds, not minutes
    python -m bench.collections_bench --vectors 20000 --images 200 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import from the repository, not from bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np


def unit_rows(rng: np.random.Generator, count: int, dimension: int) -> np.ndarray:
    rows = rng.standard_normal((count, dimension)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def clustered_rows(rng: np.random.Generator, count: int, dimension: int) -> np.ndarray:
    """Unit vectors around 1,000 random centres (cosine about 0.7 to their centre), closer to
    real embeddings than uniform directions."""
    centres = unit_rows(rng, 1000, dimension)
    noise = rng.standard_normal((count, dimension)).astype(np.float32) / np.sqrt(dimension)
    rows = centres[rng.integers(0, len(centres), count)] + noise
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def load() -> str:
    return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())


def index_part(
    vectors: int, dimension: int, queries: int, folder: Path, kinds: Sequence[str], data: str
) -> list[str]:
    """One data set, one store per index kind ("flat": the full int8 scan, "hnsw": the graph,
    forced with a threshold of 0); the same queries against both, interleaved with an exact
    numpy search of the same rows."""
    from services.vision.collections.store import CollectionStore

    rng = np.random.default_rng(0)
    rows = (clustered_rows if data == "clustered" else unit_rows)(rng, vectors, dimension)
    near = rows[rng.integers(0, vectors, queries)] + 0.02 * rng.standard_normal(
        (queries, dimension)
    ).astype(np.float32)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    other = (clustered_rows if data == "clustered" else unit_rows)(rng, queries, dimension)
    query_sets = (("near", near), ("unseen" if data == "clustered" else "uniform", other))
    truths = {label: np.argsort(-(q @ rows.T), axis=1)[:, :10] for label, q in query_sets}
    lines = [
        f"index: {vectors:,} {data} unit vectors x {dimension}, {queries} queries per kind "
        f"({load()} at the start)",
        "  | index | queries | recall@10 | p50 ms | p99 ms | exact numpy p50 ms |",
        "  |---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for kind in kinds:
        store_folder = folder / f"{data}-{kind}"
        exact_max = vectors if kind == "flat" else 0
        store = CollectionStore(store_folder, "bench-model", dimension, exact_max=exact_max)
        store.create("", "bench", exist_ok=False)
        batch = 1024
        started = time.perf_counter()
        for start in range(0, vectors, batch):
            part = rows[start : start + batch]
            ids = [str(start + i) for i in range(len(part))]
            store.upsert("", "bench", ids, part, [{} for _ in ids])
        upsert_seconds = time.perf_counter() - started
        assert store.index_kind("", "bench") == kind
        for query in other[:20]:  # warm-up: first touches of the index and the rows
            store.search("", "bench", query, 10, {}, False)
        notes.append(
            f"  {kind} upsert: {vectors / upsert_seconds:,.0f} vectors/s (batches of {batch}, "
            f"SQLite commit + index add; {load()})"
        )
        for label, query_rows in query_sets:
            truth = truths[label]
            recalls, latencies, exact_latencies = [], [], []
            time.sleep(0.5)  # OpenBLAS's threads spin a while after the last product
            for query, expected in zip(query_rows, truth, strict=True):
                begin = time.perf_counter()
                hits = store.search("", "bench", query, 10, {}, False).hits
                latencies.append((time.perf_counter() - begin) * 1000)
                found = {int(hit.id) for hit in hits}
                recalls.append(len(found & set(expected.tolist())) / 10)
            # A pass of its own: OpenBLAS's threads spin for a while after each product, and
            # interleaved they would steal the core from the next search.
            for query in query_rows:
                begin = time.perf_counter()
                np.argpartition(-(rows @ query), 10)[:10]
                exact_latencies.append((time.perf_counter() - begin) * 1000)
            lines.append(
                f"  | {kind} | {label} | {statistics.mean(recalls):.3f} | "
                f"{percentile(latencies, 50):.2f} | {percentile(latencies, 99):.2f} | "
                f"{percentile(exact_latencies, 50):.2f} |"
            )
        store.close()
        reopened = CollectionStore(store_folder, "bench-model", dimension, exact_max=exact_max)
        begin = time.perf_counter()
        reopened.search("", "bench", near[0], 10, {}, False)
        notes.append(
            f"  {kind} reopen ({'rebuilt from the rows' if kind == 'flat' else 'saved graph'}): "
            f"{time.perf_counter() - begin:.2f} s"
        )
        reopened.close()
        shutil.rmtree(store_folder, ignore_errors=True)
    lines += notes
    lines.append(f"  ({load()} at the end)")
    return lines


async def served_part(images: int, model: str, folder: Path, rounds: int) -> list[str]:
    import grpc

    from bench.vision_bench import make_jpegs
    from mmserve.common.v1 import media_pb2
    from mmserve.vision.v1 import vision_pb2, vision_pb2_grpc
    from tests.support.servers import start_process, wait_for_health

    jpegs = make_jpegs(min(images, 64))
    jpegs = [jpegs[i % len(jpegs)] for i in range(images)]
    # Distinct files (the same 64 contents) served by URI: one call, whatever the count.
    gallery = folder / "gallery"
    gallery.mkdir(parents=True)
    uris = []
    for index, data in enumerate(jpegs):
        path = gallery / f"{index:06d}.jpg"
        path.write_bytes(data)
        uris.append(media_pb2.Image(uri=path.as_uri()))
    started_load = load()
    recipe = InProcessRecipe(model)
    server = start_process(
        "services.vision",
        ["--model", model, "--data-dir", str(folder / "data"),
         "--allowed-uri-prefixes", gallery.as_uri() + "/"],
        folder / "server.log",
        timeout=600,
    )  # fmt: skip
    served_seconds: list[float] = []
    in_process: list[float] = []
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            await wait_for_health(channel, 1, timeout=600)
            stub = vision_pb2_grpc.VisionServiceStub(channel)

            async def embed() -> list[list[float]]:
                rows: list[list[float]] = []
                call = stub.StreamImageEmbeddings(
                    vision_pb2.StreamImageEmbeddingsRequest(images=uris), timeout=3600
                )
                async for event in call:
                    if event.WhichOneof("event") == "embeddings":
                        rows += [list(e.values) for e in event.embeddings.embeddings]
                return rows

            # Paired rounds: the served stream, then the recipe while the server idles.
            for _ in range(rounds):
                begin = time.perf_counter()
                rows = await embed()
                served_seconds.append(time.perf_counter() - begin)
                in_process.append(recipe.seconds(jpegs))
            await stub.CreateCollection(vision_pb2.CreateCollectionRequest(name="photos"))
            begin = time.perf_counter()
            for start in range(0, len(rows), 1024):
                items = [
                    vision_pb2.ItemInput(id=str(start + i), vector=vision_pb2.Embedding(values=row))
                    for i, row in enumerate(rows[start : start + 1024])
                ]
                await stub.UpsertItems(
                    vision_pb2.UpsertItemsRequest(collection="photos", items=items), timeout=600
                )
            upsert_seconds = time.perf_counter() - begin
            vector_latencies = []
            for row in rows[:: max(1, len(rows) // 60)][:60]:
                start = time.perf_counter()
                await stub.Search(
                    vision_pb2.SearchRequest(
                        collection="photos", vector=vision_pb2.Embedding(values=row), top_k=10
                    ),
                    timeout=60,
                )
                vector_latencies.append((time.perf_counter() - start) * 1000)
            latencies = []
            for query in ("a red fox", "a city at night", "a bowl of fruit") * 20:
                start = time.perf_counter()
                await stub.Search(
                    vision_pb2.SearchRequest(collection="photos", text=query, top_k=10),
                    timeout=60,
                )
                latencies.append((time.perf_counter() - start) * 1000)
    finally:
        server.stop()
    ratios = [s / i for s, i in zip(served_seconds, in_process, strict=True)]
    served, recipe_time = statistics.median(served_seconds), statistics.median(in_process)
    return [
        f"served: {images:,} 640x480 JPEGs on {model} (by file URI), {rounds} paired rounds "
        f"({started_load} at the start)",
        f"  StreamImageEmbeddings: {served:.1f} s ({images / served:.1f} img/s); "
        f"upserting the vectors: {upsert_seconds:.1f} s",
        f"  in-process recipe (processor + get_image_features, batches of 64, library "
        f"defaults): {recipe_time:.1f} s ({images / recipe_time:.1f} img/s)",
        f"  served/in-process time, median of paired rounds: {statistics.median(ratios):.3f}",
        f"  text Search over {images:,} images, 1 client: p50 {percentile(latencies, 50):.1f} ms, "
        f"p99 {percentile(latencies, 99):.1f} ms (text embedding included)",
        f"  vector Search, 1 client through gRPC: p50 {percentile(vector_latencies, 50):.2f} ms, "
        f"p99 {percentile(vector_latencies, 99):.2f} ms",
        f"  ({load()} at the end)",
    ]


class InProcessRecipe:
    """The model card's recipe with the libraries' defaults (no thread or wait-policy tuning):
    the processor and get_image_features on the same model folder, loaded once."""

    def __init__(self, model: str) -> None:
        from transformers import AutoModel, AutoProcessor

        from services.vision.builtin import BUILTINS

        folder = BUILTINS.get(model.removeprefix("builtin:")).build()
        self.model = AutoModel.from_pretrained(folder).eval()
        self.processor = AutoProcessor.from_pretrained(folder)

    def seconds(self, jpegs: list[bytes]) -> float:
        import io

        import torch
        from PIL import Image

        begin = time.perf_counter()
        with torch.no_grad():
            for start in range(0, len(jpegs), 64):
                part = jpegs[start : start + 64]
                batch = [Image.open(io.BytesIO(b)).convert("RGB") for b in part]
                self.model.get_image_features(**self.processor(images=batch, return_tensors="pt"))
        return time.perf_counter() - begin


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.collections_bench", description=__doc__)
    parser.add_argument("--vectors", type=int, default=100_000, help="vectors in the index part")
    parser.add_argument("--dimension", type=int, default=512, help="their dimension")
    parser.add_argument("--queries", type=int, default=200, help="queries per kind")
    parser.add_argument("--images", type=int, default=10_000, help="images in the served part")
    parser.add_argument("--model", default="builtin:clip-b32", help="the vision service's model")
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds (served part)")
    parser.add_argument(
        "--index-kinds",
        default="flat,hnsw",
        help="indexes in the index part: flat (full int8 scan), hnsw (graph); comma-separated",
    )
    parser.add_argument(
        "--data",
        default="random,clustered",
        help="data sets in the index part: random (uniform directions), clustered",
    )
    parser.add_argument("--skip-index", action="store_true", help="only the served part")
    parser.add_argument("--skip-served", action="store_true", help="only the index part")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="mmserve-collections-bench-"))
    lines: list[str] = []
    try:
        if not args.skip_index:
            for data in args.data.split(","):
                part = index_part(
                    args.vectors,
                    args.dimension,
                    args.queries,
                    folder / "index",
                    args.index_kinds.split(","),
                    data,
                )
                print("\n".join(part), flush=True)
                lines += part
        if not args.skip_served:
            served: list[Any] = asyncio.run(
                served_part(args.images, args.model, folder, args.rounds)
            )
            print("\n".join(served), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
