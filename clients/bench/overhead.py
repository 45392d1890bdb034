"""What the SDK costs on top of the generated stubs: latency of the same calls made with the raw
stubs and with the SDK (sync and asyncio, unary with and without `on_job`, streams), against
the sleepy test service with no sleep per step, so the numbers are client + gRPC overhead.

Part of the benchmark runner (`python -m bench.run --capabilities clients`); this file run as a
script is the same:

    .venv/bin/python clients/bench/overhead.py            # or --quick, --repeats N, --json -

Every figure is the median of repeated runs; each run is a number of sequential calls.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for _path in (str(REPO), str(REPO / "clients" / "python")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from bench.harness import (  # noqa: E402
    CellSpec,
    Loop,
    Plan,
    closed_loop,
    measure_rounds,
    start_served,
    timed_sequence,
)
from bench.stats import SERVED, Cell, Run, Sample  # noqa: E402

STEPS = 4


def request() -> Any:
    from mmserve.t2i.v1 import t2i_pb2

    return t2i_pb2.TextToImageRequest(
        params=t2i_pb2.GenerationParams(prompt="bench", num_inference_steps=STEPS)
    )


def _sync(fn: Callable[[], object], calls: int) -> Callable[[], Run]:
    import time

    def one(_index: int) -> tuple[Sample, float]:
        started = time.perf_counter()
        fn()
        return Sample(time.perf_counter() - started), 1.0

    return lambda: timed_sequence(one, calls)


def _async(loop: Loop, fn: Callable[[], Awaitable[object]], calls: int) -> Callable[[], Run]:
    import time

    async def one(_index: int) -> tuple[Sample, float]:
        started = time.perf_counter()
        await fn()
        return Sample(time.perf_counter() - started), 1.0

    return lambda: loop.run(closed_loop(one, calls, 1))


def benchmark(plan: Plan, log: Callable[[str], None] = print) -> tuple[list[Cell], list[str]]:
    import grpc

    from mmserve.t2i.v1 import t2i_pb2_grpc
    from mmserve_client import T2IClient, aio

    calls = plan.sizes["edge_calls"]
    notes = [
        f"clients: {calls} sequential calls per run against the sleepy test engine (0 s steps), "
        "straight to the server; variants are the client API used"
    ]
    loop = Loop()
    closers: list[Callable[[], None]] = []
    try:
        server = start_served(
            "edge", ["--step-seconds", "0"], module="tests.support.sleepy_service", envoy=False
        )
        closers.append(server.stop)
        target = server.direct
        channel = grpc.insecure_channel(target)
        closers.append(channel.close)
        stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
        client = T2IClient(target)
        closers.append(client.close)

        async def open_async() -> Any:
            return aio.T2IClient(target)

        async_client = loop.run(open_async())
        closers.append(lambda: loop.run(async_client.close()))

        async def async_stream() -> None:
            async for _ in async_client.stream_generate("bench", steps=STEPS):
                pass

        variants: dict[str, Callable[[], Run]] = {
            "raw stub, unary": _sync(lambda: stub.TextToImage(request()), calls),
            "raw stub, stream (4 steps)": _sync(
                lambda: list(stub.StreamTextToImage(request())), calls
            ),
            "SDK sync, generate": _sync(lambda: client.generate("bench", steps=STEPS), calls),
            "SDK sync, generate with on_job": _sync(
                lambda: client.generate("bench", steps=STEPS, on_job=len), calls
            ),
            "SDK sync, stream_generate (4 steps)": _sync(
                lambda: list(client.stream_generate("bench", steps=STEPS)), calls
            ),
            "SDK asyncio, generate": _async(
                loop, lambda: async_client.generate("bench", steps=STEPS), calls
            ),
            "SDK asyncio, stream_generate (4 steps)": _async(loop, async_stream, calls),
        }
        specs = [
            CellSpec(Cell("clients", SERVED, 1, "call", name), measure)
            for name, measure in variants.items()
        ]
        cells = measure_rounds(specs, plan.repeats, log)
    finally:
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                close()
        loop.close()
    return cells, notes


def main(argv: Sequence[str] | None = None) -> int:
    from bench import run

    return run.main(["--capabilities", "clients", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
