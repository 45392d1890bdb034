"""`embed`, `similarity`, `classify` and `rank` (vision)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..clients import VisionClient
from ..wire.vision import VisionItem
from .context import Context


def item(value: str) -> VisionItem:
    """A command-line item: "text:..." is a text, "image:PATH" an image file; otherwise an
    existing file is an image and anything else a text."""
    if value.startswith("text:"):
        return value.removeprefix("text:")
    if value.startswith("image:"):
        return Path(value.removeprefix("image:"))
    return Path(value) if Path(value).is_file() else value


def describe(value: VisionItem) -> str:
    return f"image {value}" if isinstance(value, Path) else f"text {value!r}"


def embed(ctx: Context) -> int:
    args = ctx.args
    if not args.image and not args.text:
        raise ValueError("give --image and/or --text")
    client = ctx.client(VisionClient)
    rows: list[np.ndarray[Any, Any]] = []
    inputs: list[str] = []
    report: dict[str, Any] = {"jobs": [], "dimension": 0}
    for kind, values in (("image", args.image), ("text", args.text)):
        if not values:
            continue
        if kind == "image":
            result = client.embed_images(
                [Path(v) for v in values],
                normalize=not args.no_normalize,
                pooling=args.pooling,
                on_job=ctx.track,
            )
        else:
            result = client.embed_texts(values, normalize=not args.no_normalize, on_job=ctx.track)
        rows.append(result.vectors)
        inputs += [f"{kind}:{v}" for v in values]
        report["jobs"].append(result.job_id)
        report["dimension"] = result.dimension
    matrix = np.concatenate(rows)
    if args.output:
        np.save(args.output, matrix)
        ctx.note(f"wrote {args.output} ({matrix.shape[0]}x{matrix.shape[1]} float32)")
    report["inputs"] = inputs
    if not args.output:
        report["embeddings"] = matrix
    human = "\n".join(
        f"{name}: [{', '.join(f'{x:.4f}' for x in row[:4])}{', ...' if len(row) > 4 else ''}]"
        f" (dim {len(row)}, norm {np.linalg.norm(row):.3f})"
        for name, row in zip(inputs, matrix, strict=True)
    )
    ctx.emit(report, human)
    return 0


def similarity(ctx: Context) -> int:
    args = ctx.args
    client = ctx.client(VisionClient)
    queries = [item(v) for v in args.query]
    candidates = [item(v) for v in args.candidate]
    result = client.similarity(queries, candidates, metric=args.metric, on_job=ctx.track)
    lines = [
        f"{describe(q)}: " + "  ".join(f"{s:+.4f}" for s in row)
        for q, row in zip(queries, result.scores, strict=True)
    ]
    ctx.emit(
        {"job_id": result.job_id, "scores": result.scores, "usage": result.usage},
        "\n".join(lines),
    )
    return 0


def classify(ctx: Context) -> int:
    args = ctx.args
    labels = [label.strip() for group in args.labels for label in group.split(",") if label]
    client = ctx.client(VisionClient)
    images = [Path(p) for p in args.image]
    result = client.classify(
        images, labels, templates=args.template, top_k=args.top_k, on_job=ctx.track
    )
    lines = []
    for path, scores in zip(images, result.labels, strict=True):
        best = ", ".join(f"{s.label} {s.score:.3f}" for s in scores)
        lines.append(f"{path}: {best}")
    ctx.emit(
        {
            "job_id": result.job_id,
            "activation": result.activation,
            "classifications": [
                {"image": str(p), "labels": s} for p, s in zip(images, result.labels, strict=True)
            ],
            "usage": result.usage,
        },
        "\n".join(lines),
    )
    return 0


def rank(ctx: Context) -> int:
    args = ctx.args
    client = ctx.client(VisionClient)
    query = item(args.query)
    candidates = [item(v) for v in args.candidates]
    result = client.rank(query, candidates, top_k=args.top_k, metric=args.metric, on_job=ctx.track)
    lines = [
        f"{n + 1}. {describe(candidates[r.index])} (#{r.index}) {r.score:+.4f}"
        for n, r in enumerate(result.results)
    ]
    ctx.emit(
        {
            "job_id": result.job_id,
            "results": [
                {"index": r.index, "score": r.score, "candidate": args.candidates[r.index]}
                for r in result.results
            ],
            "usage": result.usage,
        },
        "\n".join(lines),
    )
    return 0
