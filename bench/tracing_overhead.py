"""What tracing costs a small unary call: the toy echo service (tests/support/echo_service.py, a
job that does nothing on the device) as its own process, called over loopback with tracing off,
on (every call sampled, spans exported over OTLP/gRPC to a receiver in this process) and on but
unsampled (`--trace-sample-ratio 0`: the server span is made, nothing is recorded).

    .venv/bin/python bench/tracing_overhead.py [--calls 500] [--runs 5] [--concurrency 8]

Prints, per mode, the median over runs of the per-call latency (p50, p90, one caller), the
throughput of `--concurrency` callers, and the server process's CPU time per call (user +
system, from /proc: the figure least moved by other load on a shared machine). Modes alternate
(off, on, unsampled, off, ...) so drift spreads over all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository, not from bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.support.echo_service import SERVICE, echo_pb2
from tests.support.servers import start_process

MODES = {
    "off": [],
    "on": ["--otlp-endpoint", "{endpoint}"],
    "on, unsampled": ["--otlp-endpoint", "{endpoint}", "--trace-sample-ratio", "0"],
}


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()

    def Export(self, request, context):
        count = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        with self._lock:
            self.spans += count
        return trace_service_pb2.ExportTraceServiceResponse()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    target: str, pid: int, calls: int, concurrency: int
) -> tuple[float, float, float, float]:
    """(p50 ms, p90 ms) of `calls` sequential calls, calls/s of `concurrency` callers, and the
    server's CPU ms per call over both."""
    async with grpc.aio.insecure_channel(target) as channel:
        echo = channel.unary_unary(
            f"/{SERVICE}/Echo",
            request_serializer=echo_pb2.EchoRequest.SerializeToString,
            response_deserializer=echo_pb2.EchoResponse.FromString,
        )
        request = echo_pb2.EchoRequest(text="x")
        for _ in range(100):  # warm-up: connection, code paths, ETA samples
            await echo(request)
        cpu_before = cpu_seconds(pid)
        latencies = []
        for _ in range(calls):
            started = time.perf_counter()
            await echo(request)
            latencies.append(time.perf_counter() - started)
        cuts = statistics.quantiles(latencies, n=10)

        async def caller() -> None:
            for _ in range(calls // concurrency):
                await echo(request)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        done = calls // concurrency * concurrency
        rate = done / (time.perf_counter() - started)
        await asyncio.sleep(0.5)  # the batch exporter's last sends of these calls' spans
        cpu_ms = (cpu_seconds(pid) - cpu_before) * 1000 / (calls + done)
    return statistics.median(latencies) * 1000, cuts[8] * 1000, rate, cpu_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    receiver = Receiver()
    collector = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, collector)
    port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    endpoint = f"http://127.0.0.1:{port}"
    results: dict[str, list[tuple[float, float, float, float]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as folder:
        for run in range(args.runs):
            for mode, flags in MODES.items():
                argv_mode = [flag.format(endpoint=endpoint) for flag in flags]
                log = Path(folder) / f"echo-{run}.log"
                server = start_process("tests.support.echo_service", argv_mode, log)
                try:
                    figures = asyncio.run(
                        measure(server.target, server.process.pid, args.calls, args.concurrency)
                    )
                finally:
                    server.stop()
                results[mode].append(figures)
                p50, p90, rate, cpu = figures
                print(f"run {run + 1} {mode}: p50 {p50:.3f} ms, p90 {p90:.3f} ms, "
                      f"{rate:.0f} calls/s, {cpu:.3f} CPU ms/call", flush=True)  # fmt: skip
    collector.stop(grace=None)
    print(
        f"\nmedian of {args.runs} runs, {args.calls} calls each ({receiver.spans} spans received)"
    )
    print(f"| tracing | p50 ms | p90 ms | calls/s, {args.concurrency} callers | CPU ms/call |")
    print("|---|---|---|---|---|")
    for mode, rows in results.items():
        p50, p90, rate, cpu = (statistics.median(column) for column in zip(*rows, strict=True))
        print(f"| {mode} | {p50:.3f} | {p90:.3f} | {rate:.0f} | {cpu:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
