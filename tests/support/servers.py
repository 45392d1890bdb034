"""Starting real servers for tests: in-process (fast) or as a subprocess (signals, exit codes).
Every wait is bounded."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime.config import ServiceSettings, load_settings
from services.runtime.server import Capability, ServiceServer

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = ["--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"]


@asynccontextmanager
async def running_server(
    capability: Capability, argv: Sequence[str] = (), wait_loaded: bool = True
):
    """An in-process server on a free loopback port; drained and stopped on exit."""
    settings: ServiceSettings = load_settings(capability.settings_cls, [*LOOPBACK, *argv])
    server = ServiceServer(capability, settings)
    await server.start()
    try:
        if wait_loaded:
            await asyncio.wait_for(server.wait_loaded(), timeout=120)
        yield server
    finally:
        await asyncio.wait_for(server.drain_and_stop(), timeout=60)


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    port: int
    metrics_port: int | None
    log_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_process(
    module: str, argv: Sequence[str], log_path: Path, timeout: float = 120
) -> ServerProcess:
    """Runs `python -m module` and waits (bounded) for its 'listening' log line."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *LOOPBACK, *argv],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict) and event.get("event") == "listening":
                return ServerProcess(process, event["port"], event.get("metrics_port"), log_path)
        if process.poll() is not None:
            raise RuntimeError(
                f"{module} exited with {process.returncode}:\n{log_path.read_text()}"
            )
        time.sleep(0.05)
    process.kill()
    raise TimeoutError(f"{module} did not start in {timeout}s:\n{log_path.read_text()}")


async def health_status(channel: grpc.aio.Channel, service: str = "") -> Any:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return reply.status


async def wait_for_health(
    channel: grpc.aio.Channel, status: Any, service: str = "", timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = await health_status(channel, service)
            if last == status:
                return
        except grpc.aio.AioRpcError as exc:
            last = exc.code()
        await asyncio.sleep(0.05)
    raise TimeoutError(f"health of {service!r} stayed {last}, wanted {status}")
