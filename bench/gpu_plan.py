"""The GPU plan: what a short GPU window (about 15 minutes of machine time, 10 for the run)
measures, and how long each part should take.

    python -m bench.run --plan gpu                # on the GPU machine: the goals table
    python -m bench.run --plan gpu --dry-run      # the plan and its time estimates, anywhere
    python -m bench.run --plan gpu --smoke        # the same cells on tiny models on CPU (CI)

Only the cells the GPU goals need: vision (CLIP ViT-L/14, bf16) at 1 and 64 clients against
in-process batch 1 and batch 64, t2i (SD 1.5 shapes, 512x512, 20 steps) at 1 client unary and
streamed against the diffusers recipe, vl (Qwen2.5-VL-3B shapes) decode at 1 client against
`generate`; served straight to each server's port (Envoy's share is the edge benchmark's, a
CPU figure), no LitServe. The models are built with fast random weights (bench.random_weights)
on the GPU machine itself: a fresh machine has nothing cached.

The estimates are arithmetic on assumed H100 rates (bf16, eager PyTorch, the figures below),
not measurements; `--dry-run` prints them so the plan is checked to fit before a window opens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.stats import (
    IN_PROCESS,
    SERVED,
    Cell,
    Figure,
    Goal,
    GoalSpec,
    median,
)

GPU_CAPABILITIES = ("vision", "t2i", "vl")
BUDGET_SECONDS = 600  # one device command's limit
VISION_TOP = 64  # clients in the throughput goal (and the in-process batch it is held to)

GPU_CONCURRENCY: dict[str, tuple[int, ...]] = {"vision": (1, VISION_TOP), "t2i": (1,), "vl": (1,)}
GPU_SIZES: dict[str, Any] = {
    "vision_images": {1: 64, VISION_TOP: 1024},
    "vision_image_size": (640, 480),
    "t2i_steps": 20,
    "t2i_size": 512,
    "vl_tokens": 64,
    "omni_tokens": 48,
    "edge_calls": 1000,
}
GPU_REPEATS = 3
# The smoke run: the same cells and code paths on the tiny models, on CPU, in about a minute
# per capability.
SMOKE_CONCURRENCY: dict[str, tuple[int, ...]] = {"vision": (1, 4), "t2i": (1,), "vl": (1,)}
SMOKE_SIZES: dict[str, Any] = {
    "vision_images": {1: 4, 4: 8},
    "vision_image_size": (160, 120),
    "t2i_steps": 2,
    "t2i_size": 64,
    "vl_tokens": 4,
    "omni_tokens": 4,
    "edge_calls": 20,
}
SMOKE_REPEATS = 2


@dataclass(frozen=True)
class Rates:
    """Assumed H100 figures behind the estimates (bf16, eager, one process at a time)."""

    process_start_s: float = 12.0  # Python + torch + CUDA context + imports, per process
    build_gb_per_s: float = 1.0  # fast random weights: saving dominates
    load_gb_per_s: float = 1.5  # safetensors from the page cache to the GPU
    jpeg_make_s: float = 0.004  # per 640x480 test image, made once
    vision_served_img_s: float = 1500.0
    vision_batch1_img_s: float = 150.0
    t2i_job_s: float = 1.2  # SD 1.5, 512x512, 20 steps, classifier-free guidance
    vl_token_s: float = 0.035  # a 3.7 B decoder step under generate()
    vl_prefill_s: float = 0.3


MODEL_GB = {"vision": 0.86, "t2i": 2.14, "vl": 7.32}  # the bf16 folders bench.models builds


def estimate(
    concurrency: dict[str, tuple[int, ...]],
    sizes: dict[str, Any],
    repeats: int,
    rates: Rates = Rates(),
) -> dict[str, dict[str, float]]:
    """Seconds per phase of each capability: build (first run on a fresh machine), start
    (server and in-process model loads), warm (one pass over every cell) and rounds."""
    found: dict[str, dict[str, float]] = {}
    for name, levels in concurrency.items():
        gb = MODEL_GB.get(name, 0.0)
        build = gb / rates.build_gb_per_s + (rates.process_start_s if gb else 0.0)
        start = 2 * (rates.process_start_s + gb / rates.load_gb_per_s)
        per_round = 0.0
        if name == "vision":
            counts: dict[int, int] = sizes["vision_images"]
            start += max(counts.values()) * rates.jpeg_make_s
            for n in levels:
                rate = rates.vision_batch1_img_s if n == 1 else rates.vision_served_img_s
                per_round += 2 * counts[n] / rate  # in-process and served
        elif name == "t2i":
            per_round = 3 * rates.t2i_job_s * sizes["t2i_steps"] / 20  # in-process, unary, stream
        elif name == "vl":
            request = rates.vl_prefill_s + sizes["vl_tokens"] * rates.vl_token_s
            per_round = 2 * sum(levels) * request
            start += 2 * rates.process_start_s  # the tiny TTFT probe's server and child
            per_round += 2.0  # the probe's cells
        found[name] = {
            "build_s": round(build, 1),
            "start_s": round(start, 1),
            "warm_s": round(per_round, 1),
            "rounds_s": round(per_round * repeats, 1),
        }
    return found


def total_seconds(estimates: dict[str, dict[str, float]]) -> float:
    return round(sum(sum(phases.values()) for phases in estimates.values()), 1)


# --- the goals ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AtLeast:
    """A figure of one cell held to an absolute floor (median over rounds)."""

    name: str
    figure: Figure
    target: float

    def evaluate(self, cells: Sequence[Cell]) -> Goal:
        values = self.figure.per_run(cells)
        value = median(values)
        target = f">= {self.target:g}"
        if not math.isfinite(value):
            return Goal(self.name, math.nan, target, None)
        return Goal(self.name, value, target, value >= self.target, value, len(values))


def gpu_goal_specs(vision_clients: int = VISION_TOP) -> list[GoalSpec | AtLeast]:
    n = vision_clients
    return [
        AtLeast(
            f"vision: served img/s, {n} clients (CLIP ViT-L/14 bf16)",
            Figure("vision", SERVED, n, "throughput"),
            1500.0,
        ),
        GoalSpec(
            f"vision: served {n} clients / in-process batched ({n})",
            Figure("vision", SERVED, n, "throughput"),
            Figure("vision", IN_PROCESS, n, "throughput"),
            "ratio",
            0.95,
            at_most=False,
        ),
        GoalSpec(
            "t2i: served / in-process time per job (1 client, unary, 512x512, 20 steps)",
            Figure("t2i", IN_PROCESS, 1, "throughput"),
            Figure("t2i", SERVED, 1, "throughput", "unary"),
            "ratio",
            1.03,
            at_most=True,
        ),
        GoalSpec(
            "vl: served / in-process decode tokens/s (1 client, 3B shapes)",
            Figure("vl", SERVED, 1, "decode_tps"),
            Figure("vl", IN_PROCESS, 1, "decode_tps"),
            "ratio",
            0.95,
            at_most=False,
        ),
    ]


def evaluate_gpu_goals(cells: Sequence[Cell], vision_clients: int = VISION_TOP) -> list[Goal]:
    return [spec.evaluate(cells) for spec in gpu_goal_specs(vision_clients)]
