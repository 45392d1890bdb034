"""The runner's report: one markdown document (tables of figures, ratios and goals, with the
machine, its load and what each number means) and matplotlib PNG plots."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.stats import (
    PATH_ORDER,
    Cell,
    cells_table,
    evaluate_goals,
    goals_table,
    ratio_rows,
    ratios_table,
)

MEANINGS = """\
What each number means, and the goals: [bench/RESULTS.md](../RESULTS.md). In short: throughput
is units per wall second of a closed-loop run with N clients; p50/p99 per request; queue wait
and batch sizes as the server reports them (`usage`); every figure is the median over repeated
runs; spread = (max - min) / median of the runs' throughputs.
"""


def load_text(load: Mapping[str, Any]) -> str:
    samples = load.get("samples") or []
    if not samples:
        return "-"
    return f"{min(samples):.2f}-{max(samples):.2f} (mean {sum(samples) / len(samples):.2f})"


def markdown(
    meta: Mapping[str, Any], cells: Sequence[Cell], plots: Sequence[str] = (), heading: str = "##"
) -> str:
    """The whole report for one run. `plots` are paths relative to where the document lives."""
    options = meta.get("options", {})
    plan = meta.get("plan", {})
    lines = [
        f"{heading} {meta.get('machine', '?')}",
        "",
        f"Run {meta.get('started', '?')} ({meta.get('elapsed_s', 0) / 60:.1f} min), "
        f"`{meta.get('command', 'python -m bench.run')}`: profile **{plan.get('profile', '?')}**,"
        f" device {plan.get('device', '?')}, dtype {plan.get('dtype', '?')}, compile "
        f"{'on' if plan.get('compile') else 'off'}, {plan.get('threads', '?')} torch threads per "
        f"process, {plan.get('repeats', '?')} runs per figure"
        + "".join(f" ({cap}: {n})" for cap, n in (plan.get("rounds") or {}).items())
        + ". Software: "
        + ", ".join(f"{k} {v}" for k, v in meta.get("facts", {}).items() if k != "platform")
        + ".",
        "",
        f"Environment: {meta.get('environment', 'not recorded')}.",
        "",
        "Load average (1 min) while each capability ran (other work shares this machine):",
        "",
        "| capability | model | minutes | load average | status |",
        "|---|---|---:|---|---|",
    ]
    for name, info in meta.get("capabilities", {}).items():
        lines.append(
            f"| {name} | {info.get('model', '')} | {info.get('elapsed_s', 0) / 60:.1f} "
            f"| {load_text(info.get('load', {}))} | {info.get('status', '')} |"
        )
    lines += ["", "Goals:", "", goals_table(evaluate_goals(cells))]
    lines += ["", "Ratios:", "", ratios_table(ratio_rows(cells))]
    lines += ["", "Figures (each the median of the runs):", "", cells_table(cells)]
    notes = list(meta.get("notes", []))
    if notes:
        lines += ["", "Notes:", "", *(f"- {n}" for n in notes)]
    if plots:
        lines += ["", "Plots: " + ", ".join(f"[{Path(p).stem}]({p})" for p in plots)]
    if options:
        lines += ["", f"Options: `{options}`"]
    return "\n".join(lines) + "\n"


# --- plots --------------------------------------------------------------------------------------


def _series(cells: Sequence[Cell], capability: str) -> dict[str, list[Cell]]:
    """Cells of a capability grouped by line (path, and variant where there are several)."""
    lines: dict[str, list[Cell]] = {}
    for cell in cells:
        if cell.capability != capability:
            continue
        label = cell.path + (f" ({cell.variant})" if cell.variant else "")
        lines.setdefault(label, []).append(cell)
    return {k: sorted(v, key=lambda c: c.concurrency) for k, v in lines.items()}


def plot(cells: Sequence[Cell], folder: Path, slug: str, title: str) -> list[Path]:
    """Throughput vs concurrency and latency distributions, one panel per capability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    capabilities = list(dict.fromkeys(c.capability for c in cells))
    if not capabilities:
        return []
    written = []

    columns = min(3, len(capabilities))
    rows = math.ceil(len(capabilities) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows), squeeze=False)
    for ax, capability in zip(axes.flat, capabilities, strict=False):
        for label, series in _series(cells, capability).items():
            xs = [c.concurrency for c in series]
            ys = [c.figures.get("throughput", math.nan) for c in series]
            ax.plot(xs, ys, marker="o", label=label)
        unit = next(c.unit for c in cells if c.capability == capability)
        ax.set_title(capability)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(f"{unit}/s (median of runs)")
        ax.set_xscale("log", base=2)
        levels = sorted({c.concurrency for c in cells if c.capability == capability})
        ax.set_xticks(levels, [str(n) for n in levels])
        ax.minorticks_off()
        if len(levels) == 1:
            ax.set_xlim(levels[0] / 2, levels[0] * 2)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(capabilities) :]:
        ax.axis("off")
    figure.suptitle(f"Throughput vs concurrency: {title}")
    figure.tight_layout()
    path = folder / f"{slug}-throughput.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    written.append(path)

    figure, axes = plt.subplots(
        len(capabilities), 1, figsize=(11, 3.2 * len(capabilities)), squeeze=False
    )
    for ax, capability in zip(axes.flat, capabilities, strict=False):
        chosen = sorted(
            (c for c in cells if c.capability == capability and c.latencies_ms()),
            key=lambda c: (c.variant, c.concurrency, PATH_ORDER.index(c.path)),
        )
        if not chosen:
            ax.axis("off")
            continue
        labels = [
            f"{c.path}\n{c.concurrency} cl." + (f"\n{c.variant[:18]}" if c.variant else "")
            for c in chosen
        ]
        ax.boxplot(
            [c.latencies_ms() for c in chosen],
            tick_labels=labels,
            whis=(1, 99),
            showfliers=True,
            flierprops={"markersize": 2},
        )
        ax.set_yscale("log")
        ax.set_ylabel("latency ms (log)")
        ax.set_title(f"{capability}: per-request latency, all runs (box 25-75%, whiskers 1-99%)")
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    figure.tight_layout()
    path = folder / f"{slug}-latency.png"
    figure.savefig(path, dpi=80)
    plt.close(figure)
    written.append(path)
    return written
