"""Text-to-image throughput under concurrency: denoising batches on (`--max-batch-size 4`)
against off (`--max-batch-size 1`), at 1 and 4 concurrent clients, on the bench's t2i model of
a profile (`cpu`: the small SD-class model at 256x256, 8 steps; `tiny`: the tiny SD; `gpu`: SD
1.5 shapes with fast random weights at 512x512, 20 steps, for a GPU window: the servers pick
the GPU and bf16 by themselves).

Two servers run side by side, straight to their ports; every round measures each (server,
clients) cell once, interleaved (on/off at 1 client, then on/off at 4), so a slow stretch of a
shared machine hits both modes alike. Clients are closed loop, each with its own prompt and
seed, all asking for the same size and steps (the requests a batch may share). Figures: images/s
of the whole run, the median request latency, and the largest batch the server reported.

    python -m bench.t2i_batching_bench --rounds 3 --profile cpu

prints a Markdown table and writes it (and every run's figures) to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import from the repository, not from bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench import kit

PROMPTS = ("a red fox in snow", "a lighthouse at dusk", "a bowl of lemons", "a city in rain")
LEVELS = (1, 4)
SIZES = {"cpu": (256, 8), "tiny": (128, 4), "gpu": (512, 20)}  # (side, steps) per profile


class Client(kit.ChannelClient):
    """TextToImage calls of one size and step count, each caller its own prompt and seed."""

    def __init__(self, target: str, loop: kit.Loop, side: int, steps: int) -> None:
        from mmserve.t2i.v1 import t2i_pb2, t2i_pb2_grpc

        super().__init__(target, loop)
        self.stub = t2i_pb2_grpc.ImageGenerationServiceStub(self.channel)
        self.requests = [
            t2i_pb2.TextToImageRequest(
                params=t2i_pb2.GenerationParams(
                    prompt=prompt, width=side, height=side, num_inference_steps=steps, seed=index
                )
            )
            for index, prompt in enumerate(PROMPTS)
        ]

    async def one(self, index: int) -> tuple[kit.Sample, float]:
        started = time.perf_counter()
        reply = await self.stub.TextToImage(self.requests[index % len(self.requests)], timeout=3600)
        usage = reply.result.usage
        sample = kit.Sample(time.perf_counter() - started, usage.queue_seconds, usage.batch_size)
        return sample, float(len(reply.result.images))

    def run(self, requests: int, clients: int) -> kit.Run:
        return self.run_closed_loop(self.one, requests, clients)


def measure(
    profile: str, rounds: int, requests_per_client: int, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    from bench.models import t2i_model_dir

    side, steps = SIZES[profile]
    rows: list[dict[str, Any]] = []
    with kit.teardown() as (loop, closers):
        clients: dict[str, Client] = {}
        for mode, size in (("on", "4"), ("off", "1")):
            log(f"starting the t2i server with --max-batch-size {size}")
            args = ["--model", str(t2i_model_dir(profile)), "--max-batch-size", size]
            server = kit.start_served("t2i", args, envoy=False)
            closers.append(server.stop)
            client = Client(server.targets()[kit.SERVED], loop, side, steps)
            closers.append(client.close)
            client.run(2, 2)  # warm: the first calls pay lazy initialisation
            clients[mode] = client
        for round_index in range(rounds):
            for level in LEVELS:
                for mode in ("on", "off"):
                    run = clients[mode].run(requests_per_client * level, level)
                    row = {
                        "batching": mode,
                        "clients": level,
                        "round": round_index,
                        "images_per_s": run.units / run.wall_s,
                        "latency_p50_s": statistics.median(s.latency_s for s in run.samples),
                        "largest_batch": max(s.batch or 1 for s in run.samples),
                    }
                    rows.append(row)
                    log(json.dumps(row))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Median over rounds per cell, plus ratios (each the median of paired round ratios)."""
    cells = kit.rounds_by_cell(rows, "batching", "clients")

    def paired(a: tuple[str, int], b: tuple[str, int], field: str) -> float:
        return kit.paired_ratio(cells, a, b, field)

    lines = [
        "| batching | clients | images/s | latency p50 s | largest batch |",
        "|---|---:|---:|---:|---:|",
    ]
    for key in sorted(cells):
        rows_of = cells[key]
        lines.append(
            f"| {key[0]} | {key[1]} | {statistics.median(r['images_per_s'] for r in rows_of):.2f}"
            f" | {statistics.median(r['latency_p50_s'] for r in rows_of):.2f}"
            f" | {max(r['largest_batch'] for r in rows_of)} |"
        )
    lines += ["", "| ratio | figure |", "|---|---:|"]
    ratios = (
        ("images/s at 4 clients / 1 client, batching on", ("on", 4), ("on", 1)),
        ("images/s at 4 clients, on / off", ("on", 4), ("off", 4)),
        ("images/s at 1 client, on / off (noise: nothing to batch)", ("on", 1), ("off", 1)),
    )
    for name, a, b in ratios:
        lines.append(f"| {name} | {paired(a, b, 'images_per_s'):.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="cpu", choices=sorted(SIZES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/t2i-batching.json"))
    args = parser.parse_args(argv)
    rows = measure(
        args.profile, args.rounds, args.requests_per_client, lambda line: print(line, flush=True)
    )
    report = table(rows)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "table": report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
