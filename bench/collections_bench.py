"""Collections benchmark: the vector index alone, then through a real vision service.

1. Index: N random unit vectors of the model's dimension (100,000 x 512 by default) in the
   collection store; recall@10 of Search against exact search, for two kinds of queries:
   "near" (a stored vector plus noise: a search whose matches exist) and "uniform" (random
   directions: the worst case for any graph index); single-query latency p50/p99; upsert
   throughput; time to reopen the collection (index loaded from its file, and rebuilt from the
   rows when the file is gone).
2. Served: a vision service on its built-in CLIP (or --model): M images (640x480 JPEGs) embedded
   through StreamImageEmbeddings and upserted, against the same work in-process (the model card's
   processor + get_image_features at the service's chunk size); then text-to-image Search
   latency at 1 client through gRPC.

    python -m bench.collections_bench                       # both parts, default sizes
    python -m bench.collections_bench --vectors 20000 --images 200 --quick
"""

from __future__ import annotations

import argparse
import asyncio
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


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def index_part(vectors: int, dimension: int, queries: int, folder: Path) -> list[str]:
    from services.vision.collections.store import CollectionStore

    rng = np.random.default_rng(0)
    rows = unit_rows(rng, vectors, dimension)
    store = CollectionStore(folder, "bench-model", dimension)
    store.create("", "bench", exist_ok=False)
    batch = 1024
    started = time.perf_counter()
    for start in range(0, vectors, batch):
        part = rows[start : start + batch]
        ids = [str(start + i) for i in range(len(part))]
        store.upsert("", "bench", ids, part, [{} for _ in ids])
    upsert_seconds = time.perf_counter() - started
    near = rows[rng.integers(0, vectors, queries)] + 0.02 * rng.standard_normal(
        (queries, dimension)
    ).astype(np.float32)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    uniform = unit_rows(rng, queries, dimension)
    lines = [
        f"index: {vectors:,} random unit vectors x {dimension}, usearch HNSW, "
        f"{queries} queries per kind",
        f"  upsert: {vectors / upsert_seconds:,.0f} vectors/s (batches of {batch}, SQLite commit "
        "+ index add)",
        "  | queries | recall@10 | p50 ms | p99 ms | exact numpy p50 ms |",
        "  |---|---|---|---|---|",
    ]
    for name, query_rows in (("near", near), ("uniform", uniform)):
        truth = np.argsort(-(query_rows @ rows.T), axis=1)[:, :10]
        recalls, latencies, exact_latencies = [], [], []
        for query, expected in zip(query_rows, truth, strict=True):
            begin = time.perf_counter()
            hits = store.search("", "bench", query, 10, {}, False).hits
            latencies.append((time.perf_counter() - begin) * 1000)
            found = {int(hit.id) for hit in hits}
            recalls.append(len(found & set(expected.tolist())) / 10)
            begin = time.perf_counter()
            np.argpartition(-(rows @ query), 10)[:10]
            exact_latencies.append((time.perf_counter() - begin) * 1000)
        lines.append(
            f"  | {name} | {statistics.mean(recalls):.3f} | {percentile(latencies, 50):.2f} | "
            f"{percentile(latencies, 99):.2f} | {percentile(exact_latencies, 50):.2f} |"
        )
    store.close()
    for label, drop_index in (("from its saved file", False), ("rebuilt from the rows", True)):
        if drop_index:
            for path in (folder / "indexes").glob("*.usearch"):
                path.unlink()
        reopened = CollectionStore(folder, "bench-model", dimension)
        begin = time.perf_counter()
        reopened.search("", "bench", near[0], 10, {}, False)
        lines.append(f"  reopen {label}: {time.perf_counter() - begin:.2f} s")
        reopened.close()
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
        f"served: {images:,} 640x480 JPEGs on {model} (by file URI), {rounds} paired rounds",
        f"  StreamImageEmbeddings: {served:.1f} s ({images / served:.1f} img/s); "
        f"upserting the vectors: {upsert_seconds:.1f} s",
        f"  in-process recipe (processor + get_image_features, batches of 64, library "
        f"defaults): {recipe_time:.1f} s ({images / recipe_time:.1f} img/s)",
        f"  served/in-process time, median of paired rounds: {statistics.median(ratios):.3f}",
        f"  text Search over {images:,} images, 1 client: p50 {percentile(latencies, 50):.1f} ms, "
        f"p99 {percentile(latencies, 99):.1f} ms (text embedding included)",
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
    parser.add_argument("--skip-index", action="store_true", help="only the served part")
    parser.add_argument("--skip-served", action="store_true", help="only the index part")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="mmserve-collections-bench-"))
    lines: list[str] = []
    try:
        if not args.skip_index:
            lines += index_part(args.vectors, args.dimension, args.queries, folder / "index")
            print("\n".join(lines), flush=True)
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
