"""Chat throughput under concurrency: iteration-level batching on against off, at 1 and 8
concurrent clients, for omni's chat model (the real SmolLM2-135M-Instruct, text in and out)
and vl (the Qwen2.5-VL-like model of a profile: `tiny` or `cpu`).

Each capability runs two servers side by side (`--batching` and `--no-batching`, the same
model, straight to their ports); every round measures each (server, clients) cell once, the
cells interleaved (on/off at 1 client, then on/off at 8) so a slow stretch of a shared machine
hits both modes alike. Clients are closed loop (each sends its next StreamChat as soon as the
previous one ended). Figures: generated tokens/s of the whole run (all clients), and the median
time to first token (from sending the request to the first text delta).

`--lengths fixed` (the default) gives every request the same token limit, so 8 clients finish on
the same decode step and send their next requests together: every request arrives in a burst of
8, the worst case for time to first token. `--lengths mixed` spreads the limits from 1/4 to 7/4
of `--tokens` (the same mean, so the same work per request), as a chat workload's answers vary:
the clients drift apart after their first requests and a newcomer usually joins a running batch
alone, the steady state a server with many users sees.

    python -m bench.chat_batching_bench --rounds 3 --capabilities omni,vl --vl-profile tiny

prints a Markdown table and writes it (and every run's figures) to --out.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import from the repository, not from bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench import kit

OMNI_PROMPTS = (
    "Write a short story about a robot who learns to paint.",
    "Explain how a rainbow forms.",
    "Give me five tips for learning a new language.",
    "Describe the city of Paris to a child.",
)
VL_PROMPT = "Describe this picture in detail."
LEVELS = (1, 8)
# Token limits of --lengths mixed, as fractions of --tokens: 8 evenly spaced from 1/4 to 7/4
# (mean 1), each block of 8 requests in its own seeded order. Like the output lengths of vLLM's
# random benchmark dataset (uniform around the mean), and not multiples of one another, so rows
# that started together rarely end on the same step.
MIXED_FRACTIONS = tuple(0.25 + 1.5 * step / 7 for step in range(8))


def token_limit(index: int, tokens: int, lengths: str) -> int:
    """The max_new_tokens of the index-th request of a run."""
    if lengths == "fixed":
        return tokens
    block, position = divmod(index, len(MIXED_FRACTIONS))
    order = list(MIXED_FRACTIONS)
    random.Random(block).shuffle(order)
    return max(1, round(tokens * order[position]))


def omni_request(index: int, tokens: int) -> Any:
    from mmserve.common.v1 import chat_pb2
    from mmserve.omni.v1 import omni_pb2

    return omni_pb2.ChatRequest(
        messages=[
            omni_pb2.ChatMessage(
                role=chat_pb2.ROLE_USER,
                content=[omni_pb2.ContentPart(text=OMNI_PROMPTS[index % len(OMNI_PROMPTS)])],
            )
        ],
        sampling=chat_pb2.SamplingParams(max_new_tokens=tokens, temperature=0.0),
    )


def vl_request(index: int, tokens: int) -> Any:
    from tests.vl.helpers import USER, image, message, picture, request, text

    return request(
        message(USER, image(picture(224, 224, seed=index % 4)), text(VL_PROMPT)),
        max_new_tokens=tokens,
        temperature=0.0,
    )


class Client:
    """StreamChat calls on one channel; `run` is one closed-loop run of `clients` callers."""

    def __init__(
        self, capability: str, target: str, loop: kit.Loop, tokens: int, lengths: str = "fixed"
    ) -> None:
        self.loop = loop
        self.channel = loop.channel(target)
        self.tokens, self.lengths = tokens, lengths
        if capability == "omni":
            from mmserve.omni.v1 import omni_pb2_grpc

            self.stub: Any = omni_pb2_grpc.OmniServiceStub(self.channel)
            self.build: Callable[[int, int], Any] = omni_request
        else:
            from tests.vl.helpers import stub

            self.stub = stub(self.channel)
            self.build = vl_request
        self.requests: dict[tuple[int, int], Any] = {}

    def request(self, index: int) -> Any:
        key = (index % 4, token_limit(index, self.tokens, self.lengths))
        if key not in self.requests:
            self.requests[key] = self.build(*key)
        return self.requests[key]

    async def one(self, index: int) -> tuple[kit.Sample, float]:
        request = self.request(index)
        started = time.perf_counter()
        first = 0.0
        tokens = 0
        batch = 1
        async for event in self.stub.StreamChat(request, timeout=3600):
            kind = event.WhichOneof("event")
            if kind == "delta" and not first:
                first = time.perf_counter()
            elif kind == "completed":
                tokens = event.completed.usage.output_tokens
                batch = event.completed.usage.batch_size
        ended = time.perf_counter()
        extra = {"ttft_ms": (first - started) * 1000 if first else float("nan")}
        return kit.Sample(ended - started, 0.0, batch, extra), float(tokens)

    def run(self, requests: int, clients: int) -> kit.Run:
        return self.loop.run(kit.closed_loop(self.one, requests, clients))

    def close(self) -> None:
        self.loop.run(self.channel.close())


def server_args(capability: str, vl_profile: str) -> list[str]:
    if capability == "omni":
        return ["--tts-model", "none", "--asr-model", "none"]
    from bench.models import vl_model_dir

    return ["--model", str(vl_model_dir(vl_profile))]


def measure(
    capabilities: Sequence[str],
    rounds: int,
    tokens: int,
    requests_per_client: int,
    vl_profile: str,
    log: Callable[[str], None],
    lengths: str = "fixed",
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with kit.teardown() as (loop, closers):
        clients: dict[tuple[str, str], Client] = {}
        for capability in capabilities:
            for mode, flag in (("on", "--batching"), ("off", "--no-batching")):
                log(f"{capability}: starting the server with {flag}")
                args = [*server_args(capability, vl_profile), flag, "--batch-max-size", "8"]
                server = kit.start_served(capability, args, envoy=False)
                closers.append(server.stop)
                target = server.targets()[kit.SERVED]
                client = Client(capability, target, loop, tokens, lengths)
                closers.append(client.close)
                client.run(2, 2)  # warm: the first calls pay lazy initialisation
                clients[(capability, mode)] = client
        for round_index in range(rounds):
            for capability in capabilities:
                for level in LEVELS:
                    for mode in ("on", "off"):
                        run = clients[(capability, mode)].run(requests_per_client * level, level)
                        ttfts = [s.extra["ttft_ms"] for s in run.samples]
                        row = {
                            "capability": capability,
                            "batching": mode,
                            "clients": level,
                            "round": round_index,
                            "lengths": lengths,
                            "tokens_per_s": run.units / run.wall_s,
                            "ttft_p50_ms": statistics.median(ttfts),
                            "largest_batch": max(s.batch or 1 for s in run.samples),
                        }
                        rows.append(row)
                        log(json.dumps(row))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Median over rounds per cell, plus the goals' ratios (each the median of round ratios)."""
    cells = kit.rounds_by_cell(rows, "capability", "batching", "clients")

    def median(key: tuple[str, str, int], field: str) -> float:
        return statistics.median(r[field] for r in cells[key])

    def paired(a: tuple[str, str, int], b: tuple[str, str, int], field: str) -> float:
        return kit.paired_ratio(cells, a, b, field)

    lines = [
        "| capability | batching | clients | tokens/s | TTFT p50 ms | largest batch |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for key in sorted(cells):
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {median(key, 'tokens_per_s'):.1f} | "
            f"{median(key, 'ttft_p50_ms'):.0f} | "
            f"{max(r['largest_batch'] for r in cells[key])} |"
        )
    lines += ["", "| capability | goal | figure | target |", "|---|---|---:|---:|"]
    for capability in sorted({key[0] for key in cells}):
        on1, on8 = (capability, "on", 1), (capability, "on", 8)
        off1 = (capability, "off", 1)
        if on8 not in cells or off1 not in cells:
            continue
        goals = (
            ("tokens/s at 8 clients / 1 client (batching on)", paired(on8, on1, "tokens_per_s"),
             ">= 3"),
            ("TTFT p50 at 8 clients / 1 client (batching on)", paired(on8, on1, "ttft_p50_ms"),
             "<= 2"),
            ("1-client tokens/s, on / off", paired(on1, off1, "tokens_per_s"), ">= 1 (noise)"),
            ("1-client TTFT, on / off", paired(on1, off1, "ttft_p50_ms"), "<= 1 (noise)"),
        )  # fmt: skip
        for name, value, target in goals:
            lines.append(f"| {capability} | {name} | {value:.2f} | {target} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capabilities", default="omni,vl")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32, help="max_new_tokens per request")
    parser.add_argument("--requests-per-client", type=int, default=3)
    parser.add_argument(
        "--lengths",
        default="fixed",
        choices=("fixed", "mixed"),
        help="every request's token limit --tokens, or limits mixed around it (docstring)",
    )
    parser.add_argument("--vl-profile", default="tiny", choices=("tiny", "cpu"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/chat-batching.json"))
    args = parser.parse_args(argv)
    rows = measure(
        args.capabilities.split(","),
        args.rounds,
        args.tokens,
        args.requests_per_client,
        args.vl_profile,
        lambda line: print(line, flush=True),
        args.lengths,
    )
    report = table(rows)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "table": report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
