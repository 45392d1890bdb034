"""Fixtures of the security suite: API keys with distinctive secrets, real services started with
auth on (as processes, so their logs are what an operator would see at the default level),
and the faulty t2i test service behind the real Envoy edge."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.catalog import capability
from gateway.render import EdgeConfig
from gateway.stack import ServiceGroup, Stack, StackConfig
from tests.support.servers import ServerProcess, start_process

ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass(frozen=True)
class Keys:
    """key id -> secret; every secret is random, so finding one in a log is never chance."""

    alice: str
    bob: str
    wrong: str  # a well-formed key the servers do not know

    @property
    def flag(self) -> str:
        return f"alice:{self.alice},bob:{self.bob}"

    @staticmethod
    def bearer(secret: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {secret}"),)


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(*(f"sk-{name}-{secrets.token_hex(16)}" for name in ("alice", "bob", "wrong")))


def wait_serving(server: ServerProcess, service: str, timeout: float = 300) -> None:
    """Health needs no key; waits (bounded) until the model is loaded."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"{service} exited:\n{server.log()[-4000:]}")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{service} not SERVING in {timeout}s:\n{server.log()[-4000:]}")


@pytest.fixture(scope="session")
def omni(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[ServerProcess]:
    """The real omni service (SmolLM2; no ASR or TTS, which sessions in chat mode need not
    load), auth on, default log level."""
    folder = tmp_path_factory.mktemp("omni-auth")
    argv = [
        "--api-keys", keys.flag, "--asr-model", "none", "--tts-model", "none",
        "--data-dir", str(folder / "data"), "--max-sessions", "12",
    ]  # fmt: skip
    server = start_process("services.omni", argv, folder / "server.log", timeout=300)
    try:
        wait_serving(server, "mmserve.omni.v1.OmniService")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def vision(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[ServerProcess]:
    """The real vision service (tiny CLIP), auth on, default log level."""
    folder = tmp_path_factory.mktemp("vision-auth")
    server = start_process("services.vision", ["--api-keys", keys.flag], folder / "server.log")
    try:
        wait_serving(server, "mmserve.vision.v1.VisionService")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def edge(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[Stack]:
    """The faulty t2i test service (auth on, default log level) behind Envoy and the edge
    service, as `python -m gateway.stack` runs them."""
    group = ServiceGroup(
        capability("t2i"),
        replicas=1,
        module="tests.reliability.faults.faulty_service",
        args=("--step-seconds", "0.02", "--api-keys", keys.flag),
    )
    config = StackConfig(
        groups=[group],
        port=0,
        admin_port=0,
        run_dir=tmp_path_factory.mktemp("edge-auth"),
        ready_timeout=120,
        stop_grace=20,
        env=ENV,
        edge=EdgeConfig(upstreams=(), edge_endpoints=(), descriptor_path=""),
    )
    stack = Stack(config)
    stack.start()
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


def stack_logs(stack: Stack) -> dict[str, str]:
    return {
        path.name: path.read_text(errors="replace")
        for path in sorted((stack.config.run_dir / "logs").glob("*.log"))
    }


def log_of(path: Path) -> str:
    return path.read_text(errors="replace")
