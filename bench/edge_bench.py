"""edge benchmark: the latency Envoy adds to small calls, without a model.

One t2i replica served by the sleepy test engine on the real runtime (no model: what is left is
gRPC, the interceptor, the single-flight executor and Envoy), started as the local stack starts
it (gateway.stack: Envoy 1.40, one worker, JSON access log on). The same calls go straight to
the replica's port and through the edge, from N concurrent grpc.aio clients on one channel:

- GetModelInfo: a small unary call that queues no job (the call the <= 0.5 ms goal is about);
- TextToImage, 1 step of 0 s: a small unary call through the executor (an 8x8 PNG back);
- the same TextToImage as HTTP/JSON through the edge (grpc_json_transcoder, one kept-alive
  HTTP/1.1 connection), 1 client.

Part of the runner: `python -m bench.run --capabilities edge` (this file run as a script is the
same).
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import from the repository, not from bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # bench/profile.py shadows stdlib's

from bench import kit

T2I = "mmserve.t2i.v1.ImageGenerationService"
INFO, UNARY, JSON_UNARY = "GetModelInfo", "TextToImage 1 step", "TextToImage 1 step, HTTP/JSON"


def t2i_request() -> Any:
    from mmserve.t2i.v1 import t2i_pb2

    params = t2i_pb2.GenerationParams(prompt="bench", num_inference_steps=1, width=8)
    return t2i_pb2.TextToImageRequest(params=params)


class GrpcClient(kit.ChannelClient):
    def __init__(self, target: str, loop: kit.Loop) -> None:
        from mmserve.t2i.v1 import t2i_pb2, t2i_pb2_grpc

        super().__init__(target, loop)
        self.stub = t2i_pb2_grpc.ImageGenerationServiceStub(self.channel)
        self.info_request = t2i_pb2.GetModelInfoRequest()
        self.unary_request = t2i_request()

    async def info(self, _index: int) -> tuple[kit.Sample, float]:
        started = time.perf_counter()
        await self.stub.GetModelInfo(self.info_request, timeout=30)
        return kit.Sample(time.perf_counter() - started), 1.0

    async def unary(self, _index: int) -> tuple[kit.Sample, float]:
        started = time.perf_counter()
        reply = await self.stub.TextToImage(self.unary_request, timeout=30)
        usage = reply.result.usage
        return kit.Sample(time.perf_counter() - started, usage.queue_seconds, usage.batch_size), 1.0

    def measure(self, variant: str, calls: int, clients: int) -> kit.Run:
        call = self.info if variant == INFO else self.unary
        return self.run_closed_loop(call, calls, clients)


class JsonClient:
    """TextToImage as HTTP/JSON through the edge, one kept-alive connection."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.connection = http.client.HTTPConnection(host, int(port), timeout=30)
        self.body = json.dumps({"params": {"prompt": "bench", "numInferenceSteps": 1, "width": 8}})

    def one(self, _index: int) -> tuple[kit.Sample, float]:
        started = time.perf_counter()
        self.connection.request(
            "POST",
            f"/{T2I}/TextToImage",
            body=self.body,
            headers={"content-type": "application/json"},
        )
        reply = self.connection.getresponse()
        reply.read()
        if reply.status != 200:
            raise RuntimeError(f"HTTP/JSON TextToImage answered {reply.status}")
        return kit.Sample(time.perf_counter() - started), 1.0

    def measure(self, calls: int) -> kit.Run:
        return kit.timed_sequence(self.one, calls)

    def close(self) -> None:
        self.connection.close()


def benchmark(
    plan: kit.Plan, log: Callable[[str], None] = print
) -> tuple[list[kit.Cell], list[str]]:
    calls = plan.sizes["edge_calls"]
    notes = [
        f"edge: {calls} calls per run against the sleepy test engine (0 s steps, no model); "
        "Envoy with one worker thread and its access log on, as the local stack runs it"
    ]
    with kit.teardown() as (loop, closers):
        log("edge: starting the sleepy t2i replica behind Envoy")
        server = kit.start_served(
            "edge",
            ["--step-seconds", "0"],
            module="tests.support.sleepy_service",
            envoy=plan.envoy,
        )
        closers.append(server.stop)
        clients = {p: GrpcClient(t, loop) for p, t in server.targets().items()}
        closers += [c.close for c in clients.values()]
        warm = min(50, calls)
        specs: list[kit.CellSpec] = []
        for variant in (INFO, UNARY):
            for n in plan.concurrency["edge"]:
                for path, client in plan.paths_at("edge", n, clients).items():
                    specs.append(
                        kit.CellSpec(
                            kit.Cell("edge", path, n, "call", variant),
                            lambda v=variant, n=n, c=client: c.measure(v, calls, n),
                            lambda v=variant, n=n, c=client: c.measure(v, warm, n),
                        )
                    )
        if server.envoy is not None:
            json_client = JsonClient(server.envoy)
            closers.append(json_client.close)
            specs.append(
                kit.CellSpec(
                    kit.Cell("edge", kit.ENVOY, 1, "call", JSON_UNARY),
                    lambda: json_client.measure(calls),
                    lambda: json_client.measure(warm),
                )
            )
        cells = kit.measure_rounds(specs, plan.repeats_for("edge"), log)
    return cells, notes


if __name__ == "__main__":
    sys.exit(kit.script_main("edge"))
