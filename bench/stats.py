"""The harness's pure logic: samples and runs, per-run figures, the median of repeated runs,
ratio rows, goals, JSON and markdown. No torch, no gRPC, no clock: unit-tested in tests/bench.

Vocabulary:
- a *sample* is one request: its latency, and what the server said about it (queue wait, the
  batch it ran in) plus capability figures (time to first token, decode tokens/s...);
- a *run* is one measurement of one cell: N clients working through a fixed list of requests,
  its wall time and the units done (images, jobs, tokens, calls);
- a *cell* is one (capability, variant, path, concurrency); it is measured in several runs
  (rounds, interleaved with the other cells of its capability, after warm-up), and every figure
  reported for it is the median over its runs of that figure computed per run.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

IN_PROCESS = "in-process"
SERVED = "served"
ENVOY = "served+envoy"
LITSERVE = "litserve"
PATH_ORDER = (IN_PROCESS, SERVED, ENVOY, LITSERVE)
# Capabilities whose in-process baseline runs N jobs one after the other at N clients (its
# throughput does not depend on N): vision batches instead.
# The vl cells that measure serving's share of time to first token on the tiny model, whose
# prefill takes milliseconds (the CPU-size model's varies by +-100 ms from run to run).
TTFT_PROBE = "TTFT probe, tiny model"
SEQUENTIAL_IN_PROCESS = frozenset({"t2i", "vl", "omni"})

NAN = float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between ranks; nan if empty."""
    if not values:
        return NAN
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def median(values: Iterable[float]) -> float:
    """Median of the finite values; nan if there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return percentile(finite, 50) if finite else NAN


@dataclass
class Sample:
    latency_s: float
    queue_s: float | None = None
    batch: int | None = None
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Run:
    wall_s: float
    units: float  # images, jobs, tokens or calls done in wall_s
    samples: list[Sample] = field(default_factory=list)


def run_figures(run: Run) -> dict[str, float]:
    """The figures of one run. Throughput is units per wall second; latencies in ms; queue wait
    is the per-run median of the server-reported queue seconds; batch the mean and max size of
    the device calls the requests ran in; extra figures (ttft_s...) their per-run medians."""
    latencies = [s.latency_s * 1000 for s in run.samples]
    queues = [s.queue_s * 1000 for s in run.samples if s.queue_s is not None]
    batches = [s.batch for s in run.samples if s.batch]
    figures = {
        "throughput": run.units / run.wall_s if run.wall_s > 0 else NAN,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "queue_p50_ms": percentile(queues, 50),
        "batch_mean": sum(batches) / len(batches) if batches else NAN,
        "batch_max": float(max(batches)) if batches else NAN,
    }
    keys = sorted({k for s in run.samples for k in s.extra})
    for key in keys:
        figures[key] = median(s.extra[key] for s in run.samples if key in s.extra)
    return figures


def summarize(runs: Sequence[Run]) -> dict[str, float]:
    """Median over runs of each per-run figure, plus `runs` and `spread` (the throughput's
    (max - min) / median over runs: how much the repeats disagreed)."""
    per_run = [run_figures(r) for r in runs]
    keys: list[str] = []
    for figures in per_run:
        keys += [k for k in figures if k not in keys]
    summary = {k: median(f.get(k, NAN) for f in per_run) for k in keys}
    rates = [f["throughput"] for f in per_run if math.isfinite(f["throughput"])]
    middle = median(rates)
    summary["spread"] = (max(rates) - min(rates)) / middle if rates and middle else NAN
    summary["runs"] = float(len(runs))
    return summary


@dataclass
class Cell:
    capability: str
    path: str
    concurrency: int
    unit: str  # what throughput counts: "img", "job", "tok", "call", "reply"
    variant: str = ""
    runs: list[Run] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.capability, self.variant, self.path, self.concurrency)

    def finish(self) -> Cell:
        self.figures = summarize(self.runs)
        return self

    def latencies_ms(self) -> list[float]:
        return [s.latency_s * 1000 for r in self.runs for s in r.samples]


def find(
    cells: Sequence[Cell],
    capability: str,
    path: str,
    concurrency: int,
    variant: str | None = None,
) -> Cell | None:
    """The cell of (capability, path, concurrency), of `variant` if given, else the first one."""
    for cell in cells:
        if (cell.capability, cell.path, cell.concurrency) != (capability, path, concurrency):
            continue
        if variant is None or cell.variant == variant:
            return cell
    return None


@dataclass
class Ratio:
    capability: str
    variant: str
    path: str
    concurrency: int
    time_ratio: float  # served time per unit / in-process time per unit (lower is better)
    throughput_ratio: float  # served units/s / in-process units/s (higher is better)
    vs_litserve: float  # units/s / LitServe's units/s at the same concurrency
    envoy_added_p50_ms: float  # p50 through Envoy - p50 direct, same variant and concurrency


def ratio_rows(cells: Sequence[Cell]) -> list[Ratio]:
    """One row per cell that is not the in-process baseline and has something to compare with.
    The baseline of a cell is the in-process cell of its capability at the same concurrency
    (the in-process run at concurrency N does N requests' work the way a script would: vision
    batches N images, the others run N jobs one after the other, so for those the 1-client
    baseline stands in when N was not measured)."""
    rows = []
    for cell in cells:
        if cell.path == IN_PROCESS:
            continue
        rate = cell.figures.get("throughput", NAN)
        base = _baseline(cells, cell, cell.concurrency)
        if base is None and cell.capability in SEQUENTIAL_IN_PROCESS:
            base = _baseline(cells, cell, 1)
        base_rate = base.figures.get("throughput", NAN) if base else NAN
        lit = find(cells, cell.capability, LITSERVE, cell.concurrency)
        lit_rate = lit.figures.get("throughput", NAN) if lit and cell.path != LITSERVE else NAN
        added = NAN
        if cell.path == ENVOY:
            direct = find(cells, cell.capability, SERVED, cell.concurrency, cell.variant)
            if direct is not None:
                added = cell.figures.get("p50_ms", NAN) - direct.figures.get("p50_ms", NAN)
        row = Ratio(
            cell.capability,
            cell.variant,
            cell.path,
            cell.concurrency,
            time_ratio=_divide(base_rate, rate),
            throughput_ratio=_divide(rate, base_rate),
            vs_litserve=_divide(rate, lit_rate),
            envoy_added_p50_ms=added,
        )
        if any(math.isfinite(v) for v in (row.time_ratio, row.vs_litserve, added)):
            rows.append(row)
    return rows


def _baseline(cells: Sequence[Cell], cell: Cell, concurrency: int) -> Cell | None:
    """The in-process cell of the same variant (a probe with its own model has its own), else
    the capability's plain one."""
    same = find(cells, cell.capability, IN_PROCESS, concurrency, cell.variant)
    return same or find(cells, cell.capability, IN_PROCESS, concurrency, "")


def _divide(a: float, b: float) -> float:
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return NAN
    return a / b


# --- goals ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One figure of one cell."""

    capability: str
    path: str
    concurrency: int
    figure: str
    variant: str | None = None

    def value(self, cells: Sequence[Cell]) -> float:
        cell = find(cells, self.capability, self.path, self.concurrency, self.variant)
        return cell.figures.get(self.figure, NAN) if cell else NAN

    def per_run(self, cells: Sequence[Cell]) -> list[float]:
        """The figure of each run of the cell, in the order the rounds ran."""
        cell = find(cells, self.capability, self.path, self.concurrency, self.variant)
        return [run_figures(r).get(self.figure, NAN) for r in cell.runs] if cell else []


@dataclass(frozen=True)
class GoalSpec:
    name: str
    numerator: Figure
    denominator: Figure
    op: str  # "ratio" (a / b) or "difference" (a - b)
    target: float
    at_most: bool  # met when value <= target (else >= target)

    def combine(self, a: float, b: float) -> float:
        return _divide(a, b) if self.op == "ratio" else a - b

    def evaluate(self, cells: Sequence[Cell]) -> Goal:
        """Judged on the median over rounds of the round's own ratio (or difference) when both
        cells ran in the same rounds: the two runs of a round are seconds apart, so a machine
        that is slower in one round than in another moves both alike. The ratio of the two
        medians is kept beside it."""
        of_medians = self.combine(self.numerator.value(cells), self.denominator.value(cells))
        tops, bottoms = self.numerator.per_run(cells), self.denominator.per_run(cells)
        paired = NAN
        if len(tops) == len(bottoms) >= 2:
            paired = median(self.combine(a, b) for a, b in zip(tops, bottoms, strict=True))
        value = paired if math.isfinite(paired) else of_medians
        if not math.isfinite(value):
            return Goal(self.name, NAN, self.target_text, None)
        met = value <= self.target if self.at_most else value >= self.target
        return Goal(self.name, value, self.target_text, met, of_medians, len(tops))

    @property
    def target_text(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.target:g}"


@dataclass
class Goal:
    name: str
    value: float
    target: str
    met: bool | None  # None: not measured in this run
    of_medians: float = NAN  # the same figure from the two cells' medians (unpaired)
    rounds: int = 0  # paired rounds behind `value` (0 or 1: `value` is the unpaired figure)


def vision_goal_clients(cells: Sequence[Cell]) -> int:
    """16 clients (the goal's), or the most a run measured when it measured fewer (--quick)."""
    levels = [c.concurrency for c in cells if c.capability == "vision"]
    return 16 if 16 in levels or not levels else max(levels)


def goal_specs(vision_clients: int = 16) -> list[GoalSpec]:
    """The goals the served path is held to (bench/RESULTS.md, "Goals"), as figures of the
    cells the runner measures."""
    n = vision_clients
    return [
        GoalSpec(
            "t2i: served / in-process time per job (1 client, unary)",
            Figure("t2i", IN_PROCESS, 1, "throughput"),
            Figure("t2i", SERVED, 1, "throughput", "unary"),
            "ratio",
            1.03,
            at_most=True,
        ),
        GoalSpec(
            f"vision: served {n} clients / in-process batched ({n})",
            Figure("vision", SERVED, n, "throughput"),
            Figure("vision", IN_PROCESS, n, "throughput"),
            "ratio",
            1.0,
            at_most=False,
        ),
        GoalSpec(
            f"vision: served {n} clients / LitServe {n} clients",
            Figure("vision", SERVED, n, "throughput"),
            Figure("vision", LITSERVE, n, "throughput"),
            "ratio",
            1.0,
            at_most=False,
        ),
        GoalSpec(
            "vision: served 1 client / in-process batch 1",
            Figure("vision", SERVED, 1, "throughput"),
            Figure("vision", IN_PROCESS, 1, "throughput"),
            "ratio",
            0.95,
            at_most=False,
        ),
        GoalSpec(
            "vision: served adds to one single-image call, p50 ms (1 client)",
            Figure("vision", SERVED, 1, "p50_ms"),
            Figure("vision", IN_PROCESS, 1, "p50_ms"),
            "difference",
            1.0,
            at_most=True,
        ),
        GoalSpec(
            f"vl: served adds to time to first token, p50 ms ({TTFT_PROBE})",
            Figure("vl", SERVED, 1, "ttft_ms", TTFT_PROBE),
            Figure("vl", IN_PROCESS, 1, "ttft_ms", TTFT_PROBE),
            "difference",
            5.0,
            at_most=True,
        ),
        GoalSpec(
            "vl: served / in-process decode tokens/s (1 client)",
            Figure("vl", SERVED, 1, "decode_tps"),
            Figure("vl", IN_PROCESS, 1, "decode_tps"),
            "ratio",
            0.95,
            at_most=False,
        ),
        GoalSpec(
            "edge: Envoy adds to a small unary call, p50 ms (GetModelInfo, 1 client)",
            Figure("edge", ENVOY, 1, "p50_ms", "GetModelInfo"),
            Figure("edge", SERVED, 1, "p50_ms", "GetModelInfo"),
            "difference",
            0.5,
            at_most=True,
        ),
    ]


def evaluate_goals(cells: Sequence[Cell], vision_clients: int | None = None) -> list[Goal]:
    clients = vision_clients or vision_goal_clients(cells)
    return [spec.evaluate(cells) for spec in goal_specs(clients)]


# --- JSON -------------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """JSON has no nan/inf: they become null; floats keep 6 decimals."""
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None  # microseconds are enough
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _float(value: Any) -> float:
    return NAN if value is None else float(value)


def _samples_to_columns(samples: Sequence[Sample]) -> dict[str, Any]:
    """A run's samples column by column (compact JSON): latency_s, queue_s, batch, extra."""
    keys = sorted({k for s in samples for k in s.extra})
    return {
        "latency_s": [s.latency_s for s in samples],
        "queue_s": [s.queue_s for s in samples],
        "batch": [s.batch for s in samples],
        "extra": {k: [s.extra.get(k) for s in samples] for k in keys},
    }


def _columns_to_samples(columns: Mapping[str, Any]) -> list[Sample]:
    latencies = columns["latency_s"]
    queues = columns.get("queue_s") or [None] * len(latencies)
    batches = columns.get("batch") or [None] * len(latencies)
    extra = columns.get("extra") or {}
    return [
        Sample(
            _float(latency),
            None if queue is None else float(queue),
            batch,
            {k: float(v[i]) for k, v in extra.items() if v[i] is not None},
        )
        for i, (latency, queue, batch) in enumerate(zip(latencies, queues, batches, strict=True))
    ]


def cell_to_dict(cell: Cell) -> dict[str, Any]:
    return {
        "capability": cell.capability,
        "variant": cell.variant,
        "path": cell.path,
        "concurrency": cell.concurrency,
        "unit": cell.unit,
        "figures": cell.figures,
        "runs": [
            {"wall_s": r.wall_s, "units": r.units, "samples": _samples_to_columns(r.samples)}
            for r in cell.runs
        ],
    }


def cell_from_dict(data: Mapping[str, Any]) -> Cell:
    runs = []
    for r in data["runs"]:
        runs.append(Run(_float(r["wall_s"]), _float(r["units"]), _columns_to_samples(r["samples"])))
    figures = {k: _float(v) for k, v in data.get("figures", {}).items()}
    return Cell(
        data["capability"],
        data["path"],
        int(data["concurrency"]),
        data["unit"],
        data.get("variant", ""),
        runs,
        figures,
    )


def results_to_json(
    meta: Mapping[str, Any], cells: Sequence[Cell], vision_clients: int | None = None
) -> str:
    document = {
        "meta": dict(meta),
        "cells": [cell_to_dict(c) for c in cells],
        "ratios": [asdict(r) for r in ratio_rows(cells)],
        "goals": [asdict(g) for g in evaluate_goals(cells, vision_clients)],
    }
    return json.dumps(_clean(document), separators=(",", ":"), allow_nan=False) + "\n"


def results_from_json(text: str) -> tuple[dict[str, Any], list[Cell]]:
    document = json.loads(text)
    return dict(document["meta"]), [cell_from_dict(c) for c in document["cells"]]


# --- markdown -------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def _batch_text(figures: Mapping[str, float]) -> str:
    mean, top = figures.get("batch_mean", NAN), figures.get("batch_max", NAN)
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.1f} / {top:.0f}"


EXTRA_LABELS = {
    "ttft_ms": "TTFT ms",
    "ttfa_ms": "first audio ms",
    "decode_tps": "decode tok/s",
    "rtf": "RTF",
}


def _extra_text(figures: Mapping[str, float]) -> str:
    parts = [
        f"{label} {fmt(figures[key], 1 if key != 'rtf' else 2)}"
        for key, label in EXTRA_LABELS.items()
        if key in figures and math.isfinite(figures[key])
    ]
    return ", ".join(parts) or ""


def cells_table(cells: Sequence[Cell]) -> str:
    lines = [
        "| capability | variant | path | clients | throughput | p50 ms | p99 ms "
        "| queue wait p50 ms | batch mean / max | other (medians) | runs | spread |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for c in cells:
        f = c.figures
        lines.append(
            f"| {c.capability} | {c.variant or '-'} | {c.path} | {c.concurrency} "
            f"| {fmt(f.get('throughput'))} {c.unit}/s | {fmt(f.get('p50_ms'), 1)} "
            f"| {fmt(f.get('p99_ms'), 1)} | {fmt(f.get('queue_p50_ms'), 1)} | {_batch_text(f)} "
            f"| {_extra_text(f)} | {fmt(f.get('runs'), 0)} | {fmt(f.get('spread'), 2)} |"
        )
    return "\n".join(lines)


def ratios_table(rows: Sequence[Ratio]) -> str:
    lines = [
        "| capability | variant | path | clients | served / in-process time "
        "| throughput / in-process | throughput / LitServe | Envoy adds p50 ms |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.capability} | {r.variant or '-'} | {r.path} | {r.concurrency} "
            f"| {fmt(r.time_ratio, 3)} | {fmt(r.throughput_ratio, 3)} | {fmt(r.vs_litserve, 3)} "
            f"| {fmt(r.envoy_added_p50_ms, 2)} |"
        )
    return "\n".join(lines)


def goals_table(goals: Sequence[Goal]) -> str:
    """`measured` is the median of the per-round figures (paired rounds), `of medians` the figure
    from the two cells' medians."""
    lines = [
        "| goal | measured (median of rounds) | of medians | rounds | target | met |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for g in goals:
        met = "not measured" if g.met is None else ("yes" if g.met else "**no**")
        lines.append(
            f"| {g.name} | {fmt(g.value, 3)} | {fmt(g.of_medians, 3)} | {g.rounds} "
            f"| {g.target} | {met} |"
        )
    return "\n".join(lines)


# --- RESULTS.md sections per machine kind -----------------------------------------------------


def machine_slug(machine: str) -> str:
    """A file-name-safe key for a machine kind ("2 CPU cores, no GPU" -> "2-cpu-cores-no-gpu")."""
    return re.sub(r"[^a-z0-9]+", "-", machine.lower()).strip("-")


def replace_section(document: str, key: str, block: str) -> str:
    """Puts `block` between `<!-- bench:KEY -->` and `<!-- /bench:KEY -->` in `document`,
    replacing what was there; a new section goes before `<!-- bench:new-sections -->` if the
    document has that marker, else at the end."""
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    section = f"{start}\n{block.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(document):
        return pattern.sub(lambda _: section, document, count=1)
    if NEW_SECTIONS in document:
        return document.replace(NEW_SECTIONS, section + "\n\n" + NEW_SECTIONS, 1)
    return document.rstrip("\n") + "\n\n" + section + "\n"


NEW_SECTIONS = "<!-- bench:new-sections -->"
