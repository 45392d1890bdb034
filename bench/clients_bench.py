"""clients benchmark: what the SDK costs on top of the generated stubs: latency of the same calls
made with the raw stubs and with the SDK (sync and asyncio, unary with and without `on_job`,
streams), against the sleepy test service with no sleep per step, so the numbers are client +
gRPC overhead.

Every figure is the median of repeated runs; each run is a number of sequential calls.

Part of the runner: `python -m bench.run --capabilities clients` (this file run as a script is
the same).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import from the repository, not from bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # bench/profile.py shadows stdlib's

from bench import kit

STEPS = 4


def request() -> Any:
    from mmserve.t2i.v1 import t2i_pb2

    return t2i_pb2.TextToImageRequest(
        params=t2i_pb2.GenerationParams(prompt="bench", num_inference_steps=STEPS)
    )


def _sync(fn: Callable[[], object], calls: int) -> Callable[[], kit.Run]:
    import time

    def one(_index: int) -> tuple[kit.Sample, float]:
        started = time.perf_counter()
        fn()
        return kit.Sample(time.perf_counter() - started), 1.0

    return lambda: kit.timed_sequence(one, calls)


def _async(
    loop: kit.Loop, fn: Callable[[], Awaitable[object]], calls: int
) -> Callable[[], kit.Run]:
    import time

    async def one(_index: int) -> tuple[kit.Sample, float]:
        started = time.perf_counter()
        await fn()
        return kit.Sample(time.perf_counter() - started), 1.0

    return lambda: loop.run(kit.closed_loop(one, calls, 1))


def benchmark(
    plan: kit.Plan, log: Callable[[str], None] = print
) -> tuple[list[kit.Cell], list[str]]:
    import grpc

    from mmserve.t2i.v1 import t2i_pb2_grpc
    from mmserve_client import T2IClient, aio

    calls = plan.sizes["edge_calls"]
    notes = [
        f"clients: {calls} sequential calls per run against the sleepy test engine (0 s steps), "
        "straight to the server; variants are the client API used"
    ]
    with kit.teardown() as (loop, closers):
        server = kit.start_served(
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

        variants: dict[str, Callable[[], kit.Run]] = {
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
            kit.CellSpec(kit.Cell("clients", kit.SERVED, 1, "call", name), measure)
            for name, measure in variants.items()
        ]
        cells = kit.measure_rounds(specs, plan.repeats, log)
    return cells, notes


if __name__ == "__main__":
    sys.exit(kit.script_main("clients"))
