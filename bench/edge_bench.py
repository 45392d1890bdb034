"""edge benchmark: latency Envoy adds to a small unary call and to a stream.

One t2i replica served by the sleepy test engine on the real runtime (no model: what is left is
gRPC, the interceptor, the executor and Envoy), started with gateway.stack exactly as the local
stack starts it (Envoy 1.40, --concurrency 1, JSON access log on unless --no-access-log). The
same calls go straight to the replica's port and through the edge, one at a time from one
client, alternating the two paths in blocks so background load hits both alike:

- GetModelInfo: a small unary call that queues no job;
- TextToImage, 1 step of 0 s: a small unary call through the single-flight executor;
- StreamTextToImage, 4 steps of 0 s: time to the first event and to the end of the stream;
- the same TextToImage as HTTP/JSON (grpc_json_transcoder) vs gRPC through the edge.

Prints a markdown table of p50/p99 in ms and the added latency. Usage (repository root):

    .venv/bin/python bench/edge_bench.py
    .venv/bin/python bench/edge_bench.py --calls 2000 --no-access-log
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from gateway.catalog import capability  # noqa: E402
from gateway.render import EdgeConfig  # noqa: E402
from gateway.stack import ServiceGroup, Stack, StackConfig  # noqa: E402
from mmserve.t2i.v1 import t2i_pb2, t2i_pb2_grpc  # noqa: E402

T2I = "mmserve.t2i.v1.ImageGenerationService"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def request(steps: int) -> t2i_pb2.TextToImageRequest:
    params = t2i_pb2.GenerationParams(prompt="bench", num_inference_steps=steps, width=8)
    return t2i_pb2.TextToImageRequest(params=params)


class Paths:
    """The same calls on a direct channel and on a channel to the edge."""

    def __init__(self, direct: str, edge: str) -> None:
        self.channels = {
            "direct": grpc.insecure_channel(direct),
            "envoy": grpc.insecure_channel(edge),
        }
        self.stubs = {
            k: t2i_pb2_grpc.ImageGenerationServiceStub(c) for k, c in self.channels.items()
        }
        host, port = edge.rsplit(":", 1)
        self.http = http.client.HTTPConnection(host, int(port), timeout=30)

    def model_info(self, path: str) -> Callable[[], object]:
        stub = self.stubs[path]
        return lambda: stub.GetModelInfo(t2i_pb2.GetModelInfoRequest(), timeout=10)

    def unary(self, path: str) -> Callable[[], object]:
        stub, message = self.stubs[path], request(1)
        return lambda: stub.TextToImage(message, timeout=10)

    def stream(self, path: str) -> tuple[Callable[[], object], list[float]]:
        stub, message, firsts = self.stubs[path], request(4), []

        def run() -> None:
            started = time.perf_counter()
            for index, _ in enumerate(stub.StreamTextToImage(message, timeout=10)):
                if index == 0:
                    firsts.append((time.perf_counter() - started) * 1000)

        return run, firsts

    def json_unary(self) -> Callable[[], object]:
        body = json.dumps({"params": {"prompt": "bench", "numInferenceSteps": 1, "width": 8}})
        headers = {"content-type": "application/json"}

        def run() -> None:
            self.http.request("POST", f"/{T2I}/TextToImage", body=body, headers=headers)
            reply = self.http.getresponse()
            reply.read()
            assert reply.status == 200, reply.status

        return run

    def close(self) -> None:
        self.http.close()
        for channel in self.channels.values():
            channel.close()


WARMUP = 50


def compare(
    name: str, calls: int, block: int, fns: dict[str, Callable[[], object]]
) -> dict[str, list[float]]:
    """Alternates blocks of `block` calls per path until each has `calls` samples."""
    for fn in fns.values():  # warm connections, Envoy's pools, the executor's ETA path
        for _ in range(WARMUP):
            fn()
    samples: dict[str, list[float]] = {path: [] for path in fns}
    while min(len(v) for v in samples.values()) < calls:
        for path, fn in fns.items():
            samples[path].extend(timed(fn) for _ in range(block))
    print(f"  {name}: done", file=sys.stderr)
    return samples


def row(name: str, samples: dict[str, list[float]], a: str = "direct", b: str = "envoy") -> str:
    p50 = {k: statistics.median(v) for k, v in samples.items()}
    p99 = {k: percentile(v, 99) for k, v in samples.items()}
    return (
        f"| {name} | {p50[a]:.2f} | {p99[a]:.2f} | {p50[b]:.2f} | {p99[b]:.2f} "
        f"| {p50[b] - p50[a]:+.2f} | {p99[b] - p99[a]:+.2f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="Samples per path and call.")
    parser.add_argument("--block", type=int, default=50, help="Calls per path before switching.")
    parser.add_argument("--no-access-log", action="store_true", help="Envoy without access log.")
    args = parser.parse_args()

    run_dir = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    edge = EdgeConfig(upstreams=(), edge_endpoints=(), descriptor_path="")
    group = ServiceGroup(
        capability("t2i"), module="tests.support.sleepy_service", args=("--step-seconds", "0")
    )
    config = StackConfig(
        groups=[group],
        port=0,
        admin_port=0,
        run_dir=run_dir,
        ready_timeout=120,
        stop_grace=10,
        edge=replace(edge, access_log=not args.no_access_log),
    )
    stack = Stack(config)
    stack.start()
    try:
        stack.wait_ready()
        paths = Paths(str(group.endpoints[0]), stack.address)
        both = ("direct", "envoy")
        n, block = args.calls, args.block
        results = {
            "GetModelInfo (unary, no job)": compare(
                "GetModelInfo", n, block, {p: paths.model_info(p) for p in both}
            ),
            "TextToImage (unary, 1 step of 0 s)": compare(
                "TextToImage", n, block, {p: paths.unary(p) for p in both}
            ),
        }
        streams = {p: paths.stream(p) for p in both}
        whole = compare("StreamTextToImage", n, block, {p: s[0] for p, s in streams.items()})
        firsts = {p: s[1][WARMUP:] for p, s in streams.items()}
        results["StreamTextToImage, first event"] = firsts
        results["StreamTextToImage, whole stream (6 events)"] = whole
        grpc_edge = compare(
            "HTTP/JSON", n, block, {"grpc": paths.unary("envoy"), "json": paths.json_unary()}
        )
        paths.close()
    finally:
        stack.stop()

    log = "off" if args.no_access_log else "on"
    print(f"\n{args.calls} calls per path, one client, sequential; Envoy access log {log}.\n")
    print("| call | direct p50 | direct p99 | Envoy p50 | Envoy p99 | added p50 | added p99 |")
    print("|---|---|---|---|---|---|---|")
    for name, samples in results.items():
        print(row(name, samples))
    print(
        "\n| call (through Envoy) | gRPC p50 | gRPC p99 | HTTP/JSON p50 | HTTP/JSON p99 "
        "| added p50 | added p99 |"
    )
    print("|---|---|---|---|---|---|---|")
    print(row("TextToImage, 1 step", grpc_edge, "grpc", "json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
