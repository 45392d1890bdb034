"""`index`, `search` and `collections` (vision): a folder of images embedded through the
streaming call with a progress bar and stored in a collection; searches by text, image or id."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..clients import VisionClient
from ..events import Accepted, Queued
from ..search import EmbeddedChunk, EmbedProgress
from .context import Context

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
# One streaming call carries at most this many bytes of images (under the server's default
# 64 MiB message limit); larger folders take several calls, one progress bar over all.
CALL_BYTES = 32 * 1024 * 1024
UPSERT_BATCH = 512


def add_flags(
    index: argparse.ArgumentParser,
    search: argparse.ArgumentParser,
    listing: argparse.ArgumentParser,
) -> None:
    index.add_argument("folder", help="folder of images (searched recursively)")
    index.add_argument("-c", "--collection", required=True, help="collection name")
    index.add_argument(
        "--create", action="store_true", help="create the collection when it does not exist"
    )
    index.add_argument(
        "--chunk-size", type=int, default=0, help="images per streamed chunk (0: the server's)"
    )
    search.add_argument("-c", "--collection", required=True, help="collection name")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="search by text (text-to-image)")
    query.add_argument("--image", help="search by an image file")
    query.add_argument("--id", help="search by a stored item's id")
    search.add_argument("-k", "--top-k", type=int, default=10, help="hits (default 10)")
    search.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only items whose metadata has KEY=VALUE (repeatable)",
    )
    listing.add_argument("--delete", metavar="NAME", help="delete this collection instead")


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _calls(paths: list[Path]) -> Iterator[list[Path]]:
    """Consecutive groups of paths whose files fit one call."""
    group: list[Path] = []
    size = 0
    for path in paths:
        bytes_ = path.stat().st_size
        if group and size + bytes_ > CALL_BYTES:
            yield group
            group, size = [], 0
        group.append(path)
        size += bytes_
    if group:
        yield group


def index(ctx: Context) -> int:
    args = ctx.args
    folder = Path(args.folder)
    paths = _images(folder)
    if not paths:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    client = ctx.client(VisionClient)
    if args.create:
        client.create_collection(args.collection, exist_ok=True)
    else:
        known = {c.name for c in client.list_collections()}
        if args.collection not in known:
            raise ValueError(f"no collection {args.collection!r}; pass --create to make it")
    done = 0
    stored = 0
    jobs: list[str] = []
    for group in _calls(paths):
        vectors: list[np.ndarray[Any, Any]] = []
        stream = client.stream_embed_images(group, chunk_size=args.chunk_size)
        with stream:
            for event in stream:
                if isinstance(event, Accepted):
                    ctx.track(event.job_id)
                    jobs.append(event.job_id)
                    ctx.progress.accepted(event.position, event.queue_length, event.eta_seconds)
                elif isinstance(event, Queued):
                    ctx.progress.queued(event.position, event.queue_length, event.eta_seconds)
                elif isinstance(event, EmbeddedChunk):
                    vectors.append(event.vectors)
                elif isinstance(event, EmbedProgress):
                    ctx.progress.step(done + event.done, len(paths), 0.0, event.eta_seconds)
        matrix = np.concatenate(vectors)
        done += len(group)
        ids = [str(p.relative_to(folder)) for p in group]
        for start in range(0, len(ids), UPSERT_BATCH):
            part = slice(start, start + UPSERT_BATCH)
            result = client.upsert(
                args.collection,
                ids[part],
                vectors=matrix[part],
                metadata=[{"path": i} for i in ids[part]],
            )
            stored += result.upserted
    ctx.progress.finish()
    ctx.emit(
        {"collection": args.collection, "indexed": stored, "jobs": jobs},
        f"indexed {stored} images from {folder} into {args.collection!r}",
    )
    return 0


def search(ctx: Context) -> int:
    args = ctx.args
    where: dict[str, str] = {}
    for pair in args.where:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--where takes KEY=VALUE, got {pair!r}")
        where[key] = value
    client = ctx.client(VisionClient)
    result = client.search(
        args.collection,
        text=args.text,
        image=Path(args.image) if args.image else None,
        item_id=args.id,
        top_k=args.top_k,
        where=where,
    )
    lines = [f"{n + 1}. {hit.id} {hit.score:+.4f}" for n, hit in enumerate(result.hits)]
    ctx.emit(
        {
            "hits": [{"id": h.id, "score": h.score, "metadata": h.metadata} for h in result.hits],
            "exact": result.exact,
            "usage": result.usage,
        },
        "\n".join(lines) or "no hits",
    )
    return 0


def collections(ctx: Context) -> int:
    client = ctx.client(VisionClient)
    if ctx.args.delete:
        count = client.delete_collection(ctx.args.delete)
        ctx.emit({"deleted": ctx.args.delete, "items": count}, f"deleted {ctx.args.delete}")
        return 0
    found = client.list_collections()
    lines = [f"{c.name}: {c.count} items, {c.dimension}-d, {c.model_id}" for c in found]
    ctx.emit({"collections": found}, "\n".join(lines) or "no collections")
    return 0
