"""Denoising batches: concurrent text-to-image jobs of one shape run as one pipeline call.

Jobs share a batch only when everything the denoising loop treats as one value for the whole
batch is equal (size, steps, scheduler, adapters...): `batch_key` compares every plan field
except the per-row ones, so a field added to `GenerationPlan` splits batches by default rather
than being silently shared. Each row keeps its own prompt, negative prompt, seeds and number of
images; its seeds feed its own CPU generators, so its initial noise is exactly the noise it
would get alone. Where the family applies classifier-free guidance as
`uncond + scale * (cond - uncond)` (`FamilyProfile.row_guidance`), each row keeps its own scale
too (`RowGuidance`); only whether guidance is on at all (scale > 1) must match.

A cancelled row's caller is answered at once by the executor. Where the family's loop allows
it (`FamilyProfile.row_cut`, services.t2i.row_cut) the row leaves the batch at the end of the
step; elsewhere the rows left keep denoising it, and the call stops at the next step once every
row is cancelled.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from PIL import Image

from services.runtime.executor import JobContext
from services.t2i.previews import LatentPreviewer, PreviewFrame
from services.t2i.validation import GenerationPlan

# What each row of a batch may set for itself; every other plan field is shared by the batch.
ROW_FIELDS = frozenset({"prompt", "negative_prompt", "seed", "num_images", "preview_every"})
_SEED_MODULUS = 2**64


def batch_key(
    plan: GenerationPlan, row_guidance: bool = False, empty_negative_zeroed: bool = False
) -> Hashable:
    """Plans with equal keys can share one denoising call. `row_guidance`: the pipeline takes
    a guidance scale per row (`RowGuidance`), so only guidance on or off splits batches.
    `empty_negative_zeroed`: without a negative prompt the pipeline guides against zeros
    (SDXL's `force_zeros_for_empty_prompt`), but a batch with some negative prompts encodes
    "" for the rows without one, so rows with and without a negative prompt run apart."""
    if plan.image is not None or plan.mask is not None or plan.edit:
        # Each input image is its own tensor: such jobs are not batched.
        return ("solo", id(plan))
    shared = ROW_FIELDS | {"guidance_scale"} if row_guidance else ROW_FIELDS
    key = tuple((f.name, getattr(plan, f.name)) for f in fields(plan) if f.name not in shared)
    if empty_negative_zeroed:
        key = (*key, ("negative_given", bool(plan.negative_prompt)))
    # Guidance off runs one denoiser pass per image, on runs two: that part stays shared.
    return (*key, ("guided", plan.guidance_scale > 1)) if row_guidance else key


class RowGuidance(float):
    """Classifier-free guidance scales, one per image of a batch, given to a pipeline where it
    takes one float. The pipeline compares it with 1 as a float (the batch key makes every row
    agree on that) and multiplies it into the guidance difference, `scale * (cond - uncond)`,
    where each image's slice is scaled by its own value, in float32 and rounded to the tensor's
    dtype, as a Python float scale is applied."""

    scales: tuple[float, ...]

    def __new__(cls, scales: Sequence[float]) -> RowGuidance:
        guidance = super().__new__(cls, max(scales))
        guidance.scales = tuple(float(scale) for scale in scales)
        return guidance

    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None
    ) -> Any:
        """`tensor * guidance` reaches here (torch would otherwise take the float's value for
        every row): multiplication scales per row; any other tensor operation fails loudly.
        (A scale read as a plain number, e.g. `torch.full`'s fill value, is the float's: only
        families that never do so batch with per-row guidance.)"""
        if getattr(func, "__name__", "") in {"mul", "multiply", "__mul__", "__rmul__"}:
            guidance = next(arg for arg in args if isinstance(arg, RowGuidance))
            tensor = next(arg for arg in args if isinstance(arg, torch.Tensor))
            return guidance * tensor
        raise RuntimeError(f"per-row guidance cannot be used in {getattr(func, '__name__', func)}")

    def __mul__(self, other: Any) -> Any:
        if not isinstance(other, torch.Tensor):
            return float(self) * other
        if other.ndim == 0 or other.shape[0] != len(self.scales):
            # A pipeline that uses the scale some other way: wrong images are worse than none.
            raise RuntimeError(
                f"per-row guidance met a tensor of shape {tuple(other.shape)} for "
                f"{len(self.scales)} images"
            )
        weights = torch.tensor(self.scales, dtype=torch.float32, device=other.device)
        weights = weights.view(-1, *([1] * (other.ndim - 1)))
        return (other.float() * weights).to(other.dtype)

    __rmul__ = __mul__

    def __reduce__(self) -> Any:
        return (RowGuidance, (self.scales,))


def row_guidance(rows: Sequence[Row]) -> float | RowGuidance:
    """The guidance argument of a batch: a plain float when every row asks for the same."""
    scales = [row.plan.guidance_scale for row in rows for _ in range(row.plan.num_images)]
    if len(set(scales)) == 1:
        return scales[0]
    return RowGuidance(scales)


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
    rows = [Row(ctx, plan, 0) for ctx, plan in zip(contexts, plans, strict=True)]
    return [replace(row, first=first) for row, first in zip(rows, _firsts(rows), strict=True)]


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
    and for cancelled rows either a cut out of the batch at the step's end (`cutter`: the
    families whose loop allows it) or, without one, an early stop once every row is cancelled.
    `present` lists the rows the batch still computes, each `first` counted in the batch as it
    now is."""

    def __init__(
        self, rows: Sequence[Row], previewer: LatentPreviewer | None, cutter: Any = None
    ) -> None:
        self.rows = rows
        self.present: list[Row] = list(rows)
        self.previewer = previewer
        self.cutter = cutter
        self.started = time.monotonic()
        self.steps_done = 0

    def on_step_end(self, pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict:
        live = [row for row in self.present if not row.ctx.cancelled]
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
        return self._cut(pipe, tensors)

    def _cut(self, pipe: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        """Drops the rows cancelled by now (last, so a cancel that came during this step leaves
        before the next) and returns the loop's new tensors."""
        live = [row for row in self.present if not row.ctx.cancelled]
        if not live:
            self.rows[0].ctx.check()  # every row is cancelled: stop before another step
        if self.cutter is None or len(live) == len(self.present):
            return {}
        keep = [i for row in live for i in range(row.images.start, row.images.stop)]
        outputs = self.cutter.cut(pipe, tensors, keep)
        self.present = [
            replace(row, first=first) for row, first in zip(live, _firsts(live), strict=True)
        ]
        return outputs


def _firsts(rows: Sequence[Row]) -> list[int]:
    firsts, first = [], 0
    for row in rows:
        firsts.append(first)
        first += row.plan.num_images
    return firsts


def split_images(rows: Sequence[Row], images: Sequence[Image.Image]) -> list[list[Image.Image]]:
    """Each row's images, in the order its solo run would return them."""
    expected = sum(row.plan.num_images for row in rows)
    if len(images) != expected:
        raise RuntimeError(f"the pipeline returned {len(images)} images for {expected} requested")
    return [list(images[row.images]) for row in rows]
