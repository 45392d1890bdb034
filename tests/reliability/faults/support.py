"""Helpers of the fault, load and security suites: requests to the faulty t2i service, job state
and executor state read back from a real server (GetJob and /metrics), and bounded waits."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from mmserve.common.v1 import job_pb2
from mmserve.t2i.v1 import t2i_pb2, t2i_pb2_grpc

T2I = "mmserve.t2i.v1.ImageGenerationService"


def t2i_request(prompt: str = "a red fox", steps: int = 1, width: int = 8) -> Any:
    return t2i_pb2.TextToImageRequest(
        params=t2i_pb2.GenerationParams(prompt=prompt, num_inference_steps=steps, width=width)
    )


def early_headers_unary(channel: grpc.aio.Channel, method: str = "TextToImage") -> Any:
    """A unary t2i method called through a unary-stream multicallable (the same bytes on the
    wire) that asks for its job id early (`mmserve-job-id-early`). grpc.aio's unary calls hand
    out initial metadata only when the whole call ends, and the server sends the job id at
    acceptance only when asked; this way `mmserve-job-id` is readable the moment the server
    accepts the job, which is what the SDK does too."""
    multicallable = channel.unary_stream(
        f"/{T2I}/{method}",
        request_serializer=t2i_pb2.TextToImageRequest.SerializeToString,
        response_deserializer=t2i_pb2.TextToImageResponse.FromString,
    )

    def start(request: Any, *, metadata: Any = (), **kwargs: Any) -> Any:
        early = (*(metadata or ()), ("mmserve-job-id-early", "1"))
        return multicallable(request, metadata=early, **kwargs)

    return start


async def wait_for(
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float, what: str
) -> None:
    """Polls `predicate` (sync or async) every 20 ms until it is true; TimeoutError after
    `timeout` seconds naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


async def job_state(stub: t2i_pb2_grpc.ImageGenerationServiceStub, job_id: str) -> job_pb2.Job:
    return (await stub.GetJob(job_pb2.GetJobRequest(job_id=job_id), timeout=5)).job


async def read_until(call: Any, kind: str, timeout: float = 10) -> Any:
    """Reads a job stream until an event of `kind` (accepted, queue, step, result)."""

    async def scan() -> Any:
        while True:
            event = await call.read()
            if event is grpc.aio.EOF:
                raise AssertionError(f"stream ended before a {kind!r} event")
            if event.WhichOneof("event") == kind:
                return event

    return await asyncio.wait_for(scan(), timeout)


async def drain_stream(call: Any, timeout: float = 30) -> list[Any]:
    """Reads a stream to its end (bounded); raises its error status."""
    events: list[Any] = []

    async def scan() -> None:
        while (event := await call.read()) is not grpc.aio.EOF:
            events.append(event)

    await asyncio.wait_for(scan(), timeout)
    return events


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text page (0 when absent); labels must all match."""
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return 0.0


def proc_rss_mib(pid: int) -> float:
    """Resident memory of a local process, from /proc."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
