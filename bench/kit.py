"""What every capability module of the runner (bench/<capability>_bench.py) works with, in one
import (`from bench import kit`): the harness's plan, measuring loop, closed-loop clients and
served targets, the cells and their paths from bench.stats, and the pieces the modules share:
`teardown` (the clients' event loop and the closers of whatever a benchmark started),
`ChannelClient` (the base of their gRPC clients), `torch_dtype`, and `script_main`, which makes
a module run as a script the same as the runner (`python bench/edge_bench.py ...` is
`python -m bench.run --capabilities edge ...`).

A capability module defines `benchmark(plan, log) -> (cells, notes)`; bench.run calls it."""

from __future__ import annotations

import contextlib
import statistics
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from bench.harness import (
    REPO,
    CellSpec,
    Loop,
    Plan,
    closed_loop,
    measure_rounds,
    start_served,
    timed_sequence,
)
from bench.stats import ENVOY, IN_PROCESS, LITSERVE, SERVED, TTFT_PROBE, Cell, Run, Sample

__all__ = [
    "ENVOY",
    "IN_PROCESS",
    "LITSERVE",
    "REPO",
    "SERVED",
    "TTFT_PROBE",
    "Cell",
    "CellSpec",
    "ChannelClient",
    "Loop",
    "Plan",
    "Run",
    "Sample",
    "closed_loop",
    "measure_rounds",
    "script_main",
    "start_served",
    "teardown",
    "timed_sequence",
    "torch_dtype",
]


def rounds_by_cell(rows: Sequence[dict[str, Any]], *keys: str) -> dict[tuple[Any, ...], list]:
    """A served-vs-served bench's per-round rows grouped by cell (the values of `keys`), each
    cell's rounds in the order they ran."""
    cells: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault(tuple(row[key] for key in keys), []).append(row)
    return cells


def paired_ratio(
    cells: dict[tuple[Any, ...], list], a: tuple[Any, ...], b: tuple[Any, ...], field: str
) -> float:
    """Median over rounds of cell a's `field` / cell b's in the same round (rounds where b is 0
    left out): a goal is judged on paired rounds, so a slow stretch hits both sides alike."""
    return statistics.median(
        x[field] / y[field] for x, y in zip(cells[a], cells[b], strict=True) if y[field]
    )


def torch_dtype(name: str) -> Any:
    """The torch dtype of a plan's resolved dtype name (float32, bfloat16 or float16)."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


@contextlib.contextmanager
def teardown() -> Iterator[tuple[Loop, list[Callable[[], None]]]]:
    """The event loop of a benchmark's asyncio clients and a list of closers (servers, clients,
    in-process models) to append to as they start. On the way out, error or not, the closers
    run in reverse order, each one's own error ignored so the rest still run, then the loop
    closes."""
    loop = Loop()
    closers: list[Callable[[], None]] = []
    try:
        yield loop, closers
    finally:
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                close()
        loop.close()


class ChannelClient:
    """The base of a capability's gRPC client: one grpc.aio channel to `target` on the
    benchmark's loop, runs of concurrent calls on it, and `close`."""

    def __init__(self, target: str, loop: Loop) -> None:
        self.loop = loop
        self.channel = loop.channel(target)

    def run_closed_loop(
        self, call: Callable[[int], Awaitable[tuple[Sample, float]]], requests: int, clients: int
    ) -> Run:
        """One run: `requests` calls from `clients` concurrent callers (closed_loop)."""
        return self.loop.run(closed_loop(call, requests, clients))

    def close(self) -> None:
        self.loop.run(self.channel.close())


def script_main(capability: str, argv: Sequence[str] | None = None) -> int:
    """The runner for `capability` alone, with this process's arguments (or `argv`)."""
    from bench import run

    args = sys.argv[1:] if argv is None else argv
    return run.main(["--capabilities", capability, *args])
