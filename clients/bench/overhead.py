"""What the SDK costs on top of the generated stubs: latency of the same calls made with the raw
stubs and with the SDK (sync and asyncio, unary with and without `on_job`, streams), against
the sleepy test service with no sleep per step, so the numbers are client + gRPC overhead.

    PYTHONPATH=clients/python .venv/bin/python clients/bench/overhead.py --calls 300

Prints a markdown table (p50/p99 in ms, calls per second)."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "clients" / "python")]

from mmserve.t2i.v1 import t2i_pb2, t2i_pb2_grpc  # noqa: E402
from mmserve_client import T2IClient, aio  # noqa: E402
from tests.support.servers import start_process  # noqa: E402

STEPS = 4


def request() -> t2i_pb2.TextToImageRequest:
    return t2i_pb2.TextToImageRequest(
        params=t2i_pb2.GenerationParams(prompt="bench", num_inference_steps=STEPS)
    )


def measure(fn: Callable[[], object], calls: int) -> list[float]:
    for _ in range(20):  # warm-up: connections, caches
        fn()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


async def measure_async(fn: Callable[[], Awaitable[object]], calls: int) -> list[float]:
    for _ in range(20):
        await fn()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - started)
    return times


def row(name: str, times: list[float]) -> str:
    ordered = sorted(times)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    return f"| {name} | {p50:.2f} | {p99:.2f} | {len(times) / sum(times):.0f} |"


def run(target: str, calls: int) -> list[str]:
    rows = []
    with grpc.insecure_channel(target) as channel:
        stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
        rows.append(row("raw stub, unary", measure(lambda: stub.TextToImage(request()), calls)))
        rows.append(
            row(
                "raw stub, stream (4 steps)",
                measure(lambda: list(stub.StreamTextToImage(request())), calls),
            )
        )
    with T2IClient(target) as client:
        rows.append(
            row("SDK sync, generate", measure(lambda: client.generate("bench", steps=STEPS), calls))
        )
        rows.append(
            row(
                "SDK sync, generate with on_job",
                measure(lambda: client.generate("bench", steps=STEPS, on_job=len), calls),
            )
        )
        rows.append(
            row(
                "SDK sync, stream_generate (4 steps)",
                measure(lambda: list(client.stream_generate("bench", steps=STEPS)), calls),
            )
        )

    async def async_rows() -> None:
        async with aio.T2IClient(target) as client:
            rows.append(
                row(
                    "SDK asyncio, generate",
                    await measure_async(lambda: client.generate("bench", steps=STEPS), calls),
                )
            )

            async def stream() -> None:
                async for _ in client.stream_generate("bench", steps=STEPS):
                    pass

            rows.append(
                row("SDK asyncio, stream_generate (4 steps)", await measure_async(stream, calls))
            )

    asyncio.run(async_rows())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        server = start_process(
            "tests.support.sleepy_service",
            ["--step-seconds", "0"],
            Path(folder) / "server.log",
        )
        try:
            with T2IClient(server.target) as client:
                client.wait_ready(60)
            rows = run(server.target, args.calls)
        finally:
            server.stop()
    print(f"{args.calls} sequential calls each; sleepy engine with 0 s steps; one process\n")
    print("| client | p50 ms | p99 ms | calls/s |")
    print("|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
