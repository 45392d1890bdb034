"""openai benchmark: what the OpenAI-compatible adapter adds over calling the gRPC service.

The local stack (gateway.stack: Envoy, the vision and vl services on their built-in tiny models,
and `python -m gateway.openai`) serves the same small request two ways, both through Envoy on
the edge's one port, from 1 and 8 concurrent clients in closed loops:

- embeddings: EmbedTexts(["a photo of a cat"]) over gRPC, and POST /v1/embeddings;
- chat: vl Chat (one greedy token, "Hi") over gRPC, and POST /v1/chat/completions.

The HTTP client is a minimal asyncio HTTP/1.1 client on kept-alive connections (one per
client), so the figure is the adapter's cost (parse, validate, gRPC hop, render), not an HTTP
library's. `--frameworks` also times Starlette and FastAPI answering the same JSON route
in-process (no network), the measurement behind the choice of Starlette.

    python -m bench.openai_bench                  # both calls, 1 and 8 clients
    python -m bench.openai_bench --calls 300 --out bench/results/openai.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import from the repository, not from bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # bench/profile.py shadows stdlib's

Call = Callable[[], Awaitable[None]]


class HttpConnection:
    """One kept-alive HTTP/1.1 connection that POSTs JSON and reads a Content-Length reply."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> bytes:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        status = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        data = await self.reader.readexactly(length)
        if b" 200 " not in status:
            raise RuntimeError(f"{path}: {status!r} {data[:200]!r}")
        return data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def closed_loop(make: Callable[[int], Call], calls: int, clients: int) -> list[float]:
    """Latencies of `calls` calls made by `clients` concurrent workers, each with its own
    call function (its own connection)."""
    latencies: list[float] = []
    remaining = calls

    async def worker(call: Call) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker(make(i)) for i in range(clients)))
    return latencies


def _summary(latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    return statistics.median(ordered) * 1e3, ordered[int(len(ordered) * 0.99) - 1] * 1e3


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(address: str, calls: int, rounds: int, adapter_pid: int) -> list[dict[str, Any]]:
    import grpc

    from mmserve.common.v1 import chat_pb2
    from mmserve.vision.v1 import vision_pb2, vision_pb2_grpc
    from mmserve.vl.v1 import vl_pb2, vl_pb2_grpc

    host, port = address.rsplit(":", 1)
    channel = grpc.aio.insecure_channel(address)
    vision = vision_pb2_grpc.VisionServiceStub(channel)
    vl = vl_pb2_grpc.VisionLanguageServiceStub(channel)
    embed = vision_pb2.EmbedTextsRequest(texts=["a photo of a cat"])
    greedy = chat_pb2.SamplingParams(max_new_tokens=1, temperature=0)
    chat = vl_pb2.ChatRequest(
        messages=[
            vl_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=[vl_pb2.ContentPart(text="Hi")])
        ],
        sampling=greedy,
    )
    bodies = {
        "embeddings": ("/v1/embeddings", {"model": "vision", "input": "a photo of a cat"}),
        "chat": (
            "/v1/chat/completions",
            {
                "model": "vl",
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 1,
                "temperature": 0,
            },
        ),
    }
    grpc_calls: dict[str, Call] = {
        "embeddings": lambda: vision.EmbedTexts(embed, timeout=30),
        "chat": lambda: vl.Chat(chat, timeout=60),
    }
    connections: list[HttpConnection] = []

    def http_call(name: str) -> Callable[[int], Call]:
        path, body = bodies[name]
        data = json.dumps(body).encode()

        def make(_: int) -> Call:
            connection = HttpConnection(host, int(port))
            connections.append(connection)

            async def call() -> None:
                await connection.post(path, data)

            return call

        return make

    rows = []
    try:
        for name in ("embeddings", "chat"):
            for clients in (1, 8):
                grpc_make: Callable[[int], Call] = lambda _, n=name: grpc_calls[n]  # noqa: E731
                paths = {"gRPC": grpc_make, "OpenAI HTTP": http_call(name)}
                for make in paths.values():  # warm-up: connections, caches, models
                    await closed_loop(make, min(30, calls), clients)
                found: dict[str, list[float]] = {p: [] for p in paths}
                adapter_cpu = 0.0
                # Many short runs, alternating paths, so the load of a shared machine hits
                # both alike; the figures are over all calls of all runs.
                for _ in range(rounds):
                    for path, make in paths.items():
                        before = cpu_seconds(adapter_pid)
                        found[path] += await closed_loop(make, calls, clients)
                        if path != "gRPC":
                            adapter_cpu += cpu_seconds(adapter_pid) - before
                summary = {p: _summary(v) for p, v in found.items()}
                p50 = {p: v[0] for p, v in summary.items()}
                p99 = {p: v[1] for p, v in summary.items()}
                rows.append(
                    {
                        "call": name,
                        "clients": clients,
                        "grpc_p50_ms": p50["gRPC"],
                        "http_p50_ms": p50["OpenAI HTTP"],
                        "added_p50_ms": p50["OpenAI HTTP"] - p50["gRPC"],
                        "grpc_p99_ms": p99["gRPC"],
                        "http_p99_ms": p99["OpenAI HTTP"],
                        # CPU the adapter process spent per call: its own cost, which is
                        # what wall-clock figures hide under a loaded machine's noise.
                        "adapter_cpu_ms": adapter_cpu / (rounds * calls) * 1e3,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    finally:
        for connection in connections:
            connection.close()
        await channel.close()
    return rows


def frameworks(calls: int = 3000) -> list[dict[str, Any]]:
    """Starlette and FastAPI answering one small JSON POST in-process (ASGI call, no socket):
    the per-request cost each framework adds before the handler's own work."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def plain(request: Request) -> Response:
        body = json.loads(await request.body())
        return JSONResponse({"echo": body["input"]})

    apps: dict[str, Any] = {
        "Starlette": Starlette(routes=[Route("/v1/x", plain, methods=["POST"])])
    }
    try:  # FastAPI comes with the bench's extras (LitServe), not with mmserve
        from fastapi import FastAPI
    except ImportError:
        FastAPI = None
    if FastAPI is not None:
        fastapi_app = FastAPI()

        @fastapi_app.post("/v1/x")
        async def typed(body: dict[str, Any]) -> dict[str, Any]:
            return {"echo": body["input"]}

        apps["FastAPI"] = fastapi_app

    payload = b'{"input": "a photo of a cat"}'

    async def one(app: Any) -> None:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}

        async def send(_: dict[str, Any]) -> None:
            pass

        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1", "method": "POST", "path": "/v1/x", "raw_path": b"/v1/x",
            "query_string": b"", "root_path": "", "scheme": "http",
            "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
        }  # fmt: skip
        await app(scope, receive, send)

    async def run(app: Any) -> float:
        for _ in range(200):
            await one(app)
        started = time.perf_counter()
        for _ in range(calls):
            await one(app)
        return (time.perf_counter() - started) / calls * 1e6

    rows = []
    for name, app in apps.items():
        best = min(asyncio.run(run(app)) for _ in range(3))
        rows.append({"framework": name, "us_per_request": best})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], framework_rows: list[dict[str, Any]], note: str) -> str:
    lines = [
        "# What the OpenAI-compatible adapter adds",
        "",
        note,
        "",
        "| call | clients | gRPC p50 ms | OpenAI HTTP p50 ms | added p50 ms | gRPC p99 ms "
        "| OpenAI HTTP p99 ms | adapter CPU ms/call |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['call']} | {r['clients']} | {r['grpc_p50_ms']:.2f} | {r['http_p50_ms']:.2f} "
            f"| {r['added_p50_ms']:+.2f} | {r['grpc_p99_ms']:.2f} | {r['http_p99_ms']:.2f} "
            f"| {r['adapter_cpu_ms']:.2f} |"
        )
    if framework_rows:
        lines += [
            "",
            "| framework (in-process, one small JSON POST) | µs per request |",
            "|---|---|",
        ]
        lines += [f"| {r['framework']} | {r['us_per_request']:.0f} |" for r in framework_rows]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.openai_bench",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--calls", type=int, default=50, help="Calls per run and path.")
    parser.add_argument("--rounds", type=int, default=20, help="Alternating runs per cell.")
    parser.add_argument("--frameworks", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=None, help="Markdown file for the table.")
    args = parser.parse_args(argv)

    from gateway.catalog import capability
    from gateway.render import EdgeConfig
    from gateway.stack import ServiceGroup, Stack, StackConfig

    load_before = os.getloadavg()[0]
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory(prefix="openai-bench-") as run_dir:
        config = StackConfig(
            groups=[ServiceGroup(capability("vision")), ServiceGroup(capability("vl"))],
            port=0,
            admin_port=0,
            run_dir=Path(run_dir),
            env=env,
            edge=EdgeConfig(upstreams=(), edge_endpoints=(), descriptor_path=""),
        )
        with Stack(config) as stack:
            stack.wait_ready()
            assert stack.openai_child is not None
            pid = stack.openai_child.pid
            rows = asyncio.run(measure(stack.address, args.calls, args.rounds, pid))
    framework_rows = frameworks() if args.frameworks else []

    note = (
        f"{args.rounds} alternating runs of {args.calls} calls per path after warm-up, "
        "percentiles over all calls; both paths through Envoy (one worker) on loopback; "
        f"built-in tiny models; {os.cpu_count()} CPU cores, load average "
        f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after (other work shared the "
        "machine: figures this noisy say little below a few ms)."
    )
    text = markdown(rows, framework_rows, note)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
