"""A toy capability defined only from the runtime's public parts: a contract (toy/echo.proto,
compiled here on first import), settings, an engine, and an operation table with one plain,
one streaming and one batched operation. It proves that a new capability gets queue events,
ETA, cancel, deadlines, micro-batching, OOM halving, usage, health and reflection from the
runtime without changing it.

Texts steer the batched engine: a device call holding more than `oom_above` texts runs out of
memory (simulated), so the executor must halve the batch.
"""

from __future__ import annotations

import hashlib
import importlib
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from services.runtime import errors, job_protos
from services.runtime.app import ServiceRuntime
from services.runtime.config import ServiceSettings
from services.runtime.engine import Engine, EngineInfo
from services.runtime.executor import BatchSpec, JobContext, JobProgress
from services.runtime.operations import (
    BatchedOperation,
    CallFacts,
    Operation,
    OperationTable,
    StreamRenderer,
    Usage,
)
from services.runtime.server import Capability, main

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = Path(__file__).resolve().parent / "toy"
PROTO = PROTO_ROOT / "toy" / "echo" / "v1" / "echo.proto"
SERVICE = "toy.echo.v1.EchoService"
TEXTS_PER_CALL = 2


def _compile() -> Any:
    """echo_pb2, generated once per version of the .proto into a gitignored cache."""
    digest = hashlib.sha256(PROTO.read_bytes()).hexdigest()[:16]
    out = REPO / ".cache" / "toy-protos" / digest
    if not (out / "toy" / "echo" / "v1" / "echo_pb2.py").exists():
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{PROTO_ROOT}",
                f"-I{REPO / 'protos'}",
                f"--python_out={out}",
                str(PROTO),
            ],
            check=True,
        )
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    return importlib.import_module("toy.echo.v1.echo_pb2")


echo_pb2 = _compile()


class EchoSettings(ServiceSettings):
    """Settings of the toy echo service."""

    section = "echo"
    oom_above: int = Field(0, ge=0, description="A device call with more texts runs out of memory.")
    batch_max_size: int = Field(8, ge=1, description="Most Shout jobs per device call.")
    batch_max_wait_ms: float = Field(50.0, ge=0, description="How long a batch waits to fill.")


class EchoEngine(Engine):
    def __init__(self, settings: EchoSettings) -> None:
        self.settings = settings
        self.device_calls: list[int] = []  # jobs per Shout device call, in order
        self.threads: set[str] = set()  # the threads that loaded and ran the model

    def load(self) -> None:
        self.threads.add(_thread())

    def info(self) -> EngineInfo:
        return EngineInfo("echo", "echo", "EchoEngine", "float32", "cpu")

    def echo(self, ctx: JobContext, request: EchoRequest) -> str:
        self.threads.add(_thread())
        words = request.text.split()
        for step in range(request.steps):
            ctx.check()
            time.sleep(request.step_seconds)
            ctx.progress(step + 1, request.steps)
            if words:
                ctx.emit(words[step % len(words)])
        return request.text

    def shout(self, batch: list[list[str]]) -> list[list[str]]:
        self.threads.add(_thread())
        self.device_calls.append(len(batch))
        texts = sum(len(texts) for texts in batch)
        if self.settings.oom_above and texts > self.settings.oom_above:
            raise MemoryError(f"out of memory shouting {texts} texts (simulated)")
        return [[text.upper() for text in texts] for texts in batch]


def _thread() -> str:
    return threading.current_thread().name


@dataclass(frozen=True)
class EchoRequest:
    text: str
    steps: int
    step_seconds: float


class Echo(Operation[EchoRequest, EchoRequest, str]):
    kind = "echo"

    def parse(self, message: Any, call: CallFacts) -> EchoRequest:
        problems = errors.Violations()
        if not message.text:
            problems.add("text", "required")
        if not 0 <= message.steps <= 1000:
            problems.add("steps", f"{message.steps} is not in [0, 1000]")
        if not 0 <= message.step_seconds <= 10:
            problems.add("step_seconds", f"{message.step_seconds} is not in [0, 10]")
        problems.raise_if_any()
        return EchoRequest(message.text, message.steps, message.step_seconds)

    def run(self, prepared: EchoRequest, ctx: JobContext) -> str:
        return self.runtime.engine_as(EchoEngine).echo(ctx, prepared)

    async def render(self, result: str, usage: Usage) -> Any:
        return echo_pb2.EchoResponse(text=result, usage=job_protos.usage(usage))

    def stream_renderer(self, prepared: EchoRequest) -> StreamRenderer[str]:
        return _EchoStream()


class _EchoStream(StreamRenderer[str]):
    def __init__(self) -> None:
        self.words: list[str] = []

    async def output(self, payload: Any) -> Any:
        self.words.append(payload)
        return echo_pb2.StreamEchoResponse(word=payload)

    async def progress(self, event: JobProgress) -> Any:
        return echo_pb2.StreamEchoResponse(progress=job_protos.progress(event))

    async def done(self, result: str, usage: Usage) -> Any:
        return echo_pb2.StreamEchoResponse(
            done=echo_pb2.EchoResponse(text=result, usage=job_protos.usage(usage))
        )

    async def cancelled(self, usage: Usage) -> Any:
        return echo_pb2.StreamEchoResponse(
            cancelled=echo_pb2.EchoResponse(
                text=" ".join(self.words), usage=job_protos.usage(usage)
            )
        )


class Shout(BatchedOperation[list[str], list[str], list[str]]):
    kind = "shout"

    def parse(self, message: Any, call: CallFacts) -> list[str]:
        problems = errors.Violations()
        if not message.texts:
            problems.add("texts", "at least one text is required")
        for index, text in enumerate(message.texts):
            if not text:
                problems.add(f"texts[{index}]", "must not be empty")
        problems.raise_if_any()
        return list(message.texts)

    def split(self, request: list[str]) -> list[list[str]]:
        return [request[i : i + TEXTS_PER_CALL] for i in range(0, len(request), TEXTS_PER_CALL)]

    def halve(self, request: list[str]) -> list[list[str]]:
        middle = (len(request) + 1) // 2
        return [request[:middle], request[middle:]] if len(request) > 1 else []

    def merge(self, results: list[list[str]]) -> list[str]:
        return [text for part in results for text in part]

    def batch_spec(self) -> BatchSpec:
        settings = self.runtime.settings_as(EchoSettings)
        return BatchSpec(settings.batch_max_size, settings.batch_max_wait_ms)

    def run_batch(self, prepared: list[list[str]], contexts: list[JobContext]) -> list[list[str]]:
        return self.runtime.engine_as(EchoEngine).shout(prepared)

    async def render(self, result: list[str], usage: Usage) -> Any:
        return echo_pb2.ShoutResponse(texts=result, usage=job_protos.usage(usage))


def operations(runtime: ServiceRuntime) -> OperationTable:
    echo = Echo(runtime)
    return {"Echo": echo, "StreamEcho": echo, "Shout": Shout(runtime)}


CAPABILITY = Capability(
    name="echo",
    service_names=(SERVICE,),
    settings_cls=EchoSettings,
    create_engine=EchoEngine,
    operations=operations,
)

if __name__ == "__main__":
    sys.exit(main(CAPABILITY))
