"""Denoising batches: concurrent text-to-image jobs of one shape run as one pipeline call.

Jobs share a batch only when everything the denoising loop treats as one value for the whole
batch is equal (size, steps, guidance, scheduler, adapters...): `batch_key` compares every plan
field except the per-row ones, so a field added to `GenerationPlan` splits batches by default
rather than being silently shared. Each row keeps its own prompt, negative prompt, seeds and
number of images; its seeds feed its own CPU generators, so its initial noise is exactly the
noise it would get alone.

A cancelled row's caller is answered at once by the executor; the rows left keep denoising, and
the call stops at the next step once every row is cancelled. Cutting a row out of a running
diffusers loop would mean slicing every family's conditioning tensors, which the pipelines do
not expose uniformly.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from PIL import Image

from services.runtime.executor import JobContext
from services.t2i.previews import LatentPreviewer, PreviewFrame
from services.t2i.validation import GenerationPlan

# What each row of a batch may set for itself; every other plan field is shared by the batch.
ROW_FIELDS = frozenset({"prompt", "negative_prompt", "seed", "num_images", "preview_every"})
_SEED_MODULUS = 2**64


def batch_key(plan: GenerationPlan) -> Hashable:
    """Plans with equal keys can share one denoising call."""
    if plan.image is not None or plan.mask is not None or plan.edit:
        # Each input image is its own tensor: such jobs are not batched.
        return ("solo", id(plan))
    return tuple(
        (field.name, getattr(plan, field.name))
        for field in fields(plan)
        if field.name not in ROW_FIELDS
    )


@dataclass(frozen=True)
class Row:
    """One job of a batch and where its images sit in the pipeline's output."""

    ctx: JobContext
    plan: GenerationPlan
    first: int  # index of the row's first image in the batch

    @property
    def images(self) -> slice:
        return slice(self.first, self.first + self.plan.num_images)


def rows_of(contexts: Sequence[JobContext], plans: Sequence[GenerationPlan]) -> list[Row]:
    rows, first = [], 0
    for ctx, plan in zip(contexts, plans, strict=True):
        rows.append(Row(ctx, plan, first))
        first += plan.num_images
    return rows


def row_inputs(rows: Sequence[Row], negatives: Sequence[str | None]) -> dict[str, Any]:
    """The per-image arguments of the pipeline call: one prompt, negative prompt and CPU
    generator per image (num_images_per_prompt is then 1), seeded as each row's solo run."""
    prompts: list[str] = []
    negative_prompts: list[str] = []
    generators: list[torch.Generator] = []
    for row, negative in zip(rows, negatives, strict=True):
        count = row.plan.num_images
        prompts.extend([row.plan.prompt] * count)
        negative_prompts.extend([negative or ""] * count)
        generators.extend(
            torch.Generator("cpu").manual_seed((row.plan.seed + i) % _SEED_MODULUS)
            for i in range(count)
        )
    arguments: dict[str, Any] = {
        "prompt": prompts,
        "num_images_per_prompt": 1,
        "generator": generators,
    }
    if any(negative is not None for negative in negatives):
        arguments["negative_prompt"] = negative_prompts
    return arguments


class BatchSteps:
    """callback_on_step_end for a batch (device thread only): progress and previews per row,
    and an early stop once every row is cancelled."""

    def __init__(self, rows: Sequence[Row], previewer: LatentPreviewer | None) -> None:
        self.rows = rows
        self.previewer = previewer
        self.started = time.monotonic()
        self.steps_done = 0

    def on_step_end(self, pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict:
        live = [row for row in self.rows if not row.ctx.cancelled]
        if not live:
            self.rows[0].ctx.check()  # raises the first row's reason: the device is free now
        step = index + 1
        self.steps_done = step
        total = int(getattr(pipe, "_num_timesteps", 0) or self.rows[0].plan.steps)
        latents = tensors.get("latents")
        elapsed = time.monotonic() - self.started
        for row in live:
            every = row.plan.preview_every
            if every and self.previewer is not None and latents is not None and step % every == 0:
                eta = elapsed / step * max(0, total - step)
                rgb = self.previewer.rgb(latents[row.first :], row.plan.height, row.plan.width)
                row.ctx.emit(PreviewFrame(step, total, elapsed, eta, rgb))
            row.ctx.progress(step, total)
        return {}


def split_images(rows: Sequence[Row], images: Sequence[Image.Image]) -> list[list[Image.Image]]:
    """Each row's images, in the order its solo run would return them."""
    expected = sum(row.plan.num_images for row in rows)
    if len(images) != expected:
        raise RuntimeError(f"the pipeline returned {len(images)} images for {expected} requested")
    return [list(images[row.images]) for row in rows]
