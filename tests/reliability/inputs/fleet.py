"""The four capability servers as real processes on loopback, and calls to any of their RPCs.

Each server runs `python -m services.<capability>` on its built-in tiny model with small,
explicit limits (1 MiB messages, 4 MP images, 10 s audio, a few tokens and steps), so hostile
input is checked against known numbers and valid fuzzed requests stay cheap. A process (not an
in-process server) is what makes "never a crash" checkable: a segfault in a decoder kills the
server, not the test run, and shows up as a dead process and an UNAVAILABLE call.

Calls go through generic method handles built from the service descriptors, so every RPC,
present and future, is reachable without a hand-written stub.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mmserve.omni.v1 import omni_pb2
from mmserve.t2i.v1 import t2i_pb2
from mmserve.vision.v1 import vision_pb2
from mmserve.vl.v1 import vl_pb2
from tests.reliability.inputs.protofuzz import message_class
from tests.support.servers import LOOPBACK, REPO

# Generous for tiny models on two loaded cores; a call that needs longer counts as a hang.
CALL_TIMEOUT = 45.0
START_TIMEOUT = 300.0
MAX_MESSAGE_MB = 1
MAX_IMAGE_PIXELS = 4_000_000
MAX_IMAGE_SIDE = 4096
MAX_AUDIO_SECONDS = 10.0
ERROR_DOMAIN = "mmserve.dev"

CAPABILITY_MODULES = {"t2i": t2i_pb2, "vl": vl_pb2, "vision": vision_pb2, "omni": omni_pb2}

# Per-capability flags: the tiny built-in model, few threads (two cores run four servers),
# and cheap generations (a valid fuzzed request must not take the device for long).
CAPABILITY_ARGS: dict[str, list[str]] = {
    "vision": ["--torch-threads", "1"],
    "t2i": [
        "--torch-threads",
        "1",
        "--warmup-steps",
        "1",
        "--default-steps",
        "2",
        "--max-steps",
        "3",
        "--max-size",
        "96",
        "--max-images-per-request",
        "2",
    ],
    "vl": ["--default-max-new-tokens", "3", "--max-new-tokens", "6"],
    "omni": [
        "--default-max-new-tokens",
        "3",
        "--max-new-tokens",
        "6",
        "--max-audio-seconds",
        str(MAX_AUDIO_SECONDS),
        "--transcribe-max-seconds",  # Transcribe's clips: the same limit as chat's
        str(MAX_AUDIO_SECONDS),
        "--tts-noise-scale",
        "0",
        "--tts-noise-w-scale",
        "0",
        "--asr-threads",
        "1",
    ],
}

# Codes a bad request may end with. Everything else is a bug: UNKNOWN and INTERNAL (an
# unmapped exception), DEADLINE_EXCEEDED (a hang: our deadline is far above any tiny job),
# UNAVAILABLE (the server died or stopped serving), CANCELLED (nobody cancelled).
DEFINED_CODES = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)


def capability_service(capability: str) -> ServiceDescriptor:
    services = list(CAPABILITY_MODULES[capability].DESCRIPTOR.services_by_name.values())
    assert len(services) == 1, f"{capability}: expected one service, got {services}"
    return services[0]


@dataclass(frozen=True)
class Rpc:
    """One RPC of one capability, as the fuzz tests are parametrized."""

    capability: str
    method: MethodDescriptor

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def input(self) -> Descriptor:
        return self.method.input_type

    def __str__(self) -> str:
        return f"{self.capability}.{self.method.name}"


def all_rpcs() -> list[Rpc]:
    return [
        Rpc(capability, method)
        for capability in CAPABILITY_MODULES
        for method in capability_service(capability).methods
    ]


# ---------------------------------------------------------------------------------------------
# Outcomes


@dataclass
class Outcome:
    rpc: Rpc
    code: grpc.StatusCode
    details: str = ""
    trailing: Sequence[tuple[str, Any]] = ()
    initial: Sequence[tuple[str, Any]] = ()
    responses: list[Any] = field(default_factory=list)  # the RPC's response messages
    seconds: float = 0.0

    def _status_details(self) -> list[Any]:
        for key, value in self.trailing:
            if key == "grpc-status-details-bin":
                return list(status_pb2.Status.FromString(value).details)
        return []

    def detail(self, cls: type[Message]) -> Any:
        for packed in self._status_details():
            if packed.Is(cls.DESCRIPTOR):
                message = cls()
                packed.Unpack(message)
                return message
        return None

    @property
    def violations(self) -> list[str]:
        bad = self.detail(error_details_pb2.BadRequest)
        return [v.field for v in bad.field_violations] if bad is not None else []

    @property
    def from_transport(self) -> bool:
        """Refused by gRPC itself (message size) before any handler ran: no rich details."""
        return self.code is grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (
            self.details or ""
        )

    def metadata(self, key: str) -> str | None:
        for k, v in (*self.initial, *self.trailing):
            if k == key:
                return v if isinstance(v, str) else v.decode()
        return None

    def problems(self) -> list[str]:
        """What is wrong with this outcome for any request, valid or not."""
        found: list[str] = []
        if self.code not in DEFINED_CODES:
            found.append(f"undefined outcome {self.code.name}: {self.details!r}")
            return found
        if self.from_transport:
            return found
        if self.metadata("x-request-id") is None:
            found.append(f"{self.code.name} reply without x-request-id")
        if self.code is grpc.StatusCode.OK:
            return found
        info = self.detail(error_details_pb2.ErrorInfo)
        if info is None or info.domain != ERROR_DOMAIN:
            found.append(f"{self.code.name} without ErrorInfo({ERROR_DOMAIN}): {self.details!r}")
        if self.code is grpc.StatusCode.INVALID_ARGUMENT:
            found.extend(self._violation_problems())
        return found

    def _violation_problems(self) -> list[str]:
        fields = self.violations
        if not fields:
            return [f"INVALID_ARGUMENT without a BadRequest field violation: {self.details!r}"]
        names = {f.name for f in self.rpc.input.fields} | {
            o.name for o in self.rpc.input.oneofs if not o.name.startswith("_")
        }
        return [
            f"violation names {path!r}, not a field of {self.rpc.input.name}"
            for path in fields
            if path.split(".")[0].split("[")[0] not in names
        ]

    def __str__(self) -> str:
        shown = f"{self.rpc} -> {self.code.name}"
        if self.details:
            shown += f" {self.details[:300]!r}"
        if self.violations:
            shown += f" fields={self.violations}"
        return shown


# ---------------------------------------------------------------------------------------------
# Media the URI policy is tested against (conftest.py builds them)


@dataclass
class MediaRoot:
    allowed: Path
    outside: Path
    png: bytes
    wav: bytes


@dataclass
class HttpMedia:
    """A loopback HTTP server: /allowed/ is under the servers' allowed prefix, /private/ not.
    `requested` records every path asked for, so a test can prove no forbidden fetch
    happened (SSRF)."""

    port: int
    requested: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def prefix(self) -> str:
        return self.url("/allowed/")


# ---------------------------------------------------------------------------------------------
# Servers


def _serialize(message: Message | bytes) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


@dataclass
class Served:
    """A running capability server and a channel to it."""

    capability: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    channel: grpc.Channel
    service: ServiceDescriptor
    pools: dict[str, list[str]] = field(default_factory=dict)
    _log_offset: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rpc(self, name: str) -> Rpc:
        return Rpc(self.capability, self.service.methods_by_name[name])

    def alive(self) -> bool:
        return self.process.poll() is None

    def call(
        self,
        rpc: Rpc | str,
        request: Message | bytes | Sequence[Message],
        timeout: float = CALL_TIMEOUT,
        max_events: int | None = None,
    ) -> Outcome:
        """Calls any RPC with a message (or raw bytes, or a list for client streams) and
        drains its responses; never raises for an RPC error, never waits past `timeout`."""
        if isinstance(rpc, str):
            rpc = self.rpc(rpc)
        method = rpc.method
        response_cls = message_class(method.output_type)
        kwargs: dict[str, Any] = {
            "request_serializer": _serialize,
            "response_deserializer": response_cls.FromString,
        }
        started = time.monotonic()
        outcome = Outcome(rpc, grpc.StatusCode.OK)
        try:
            if method.server_streaming:
                if method.client_streaming:
                    stream = self.channel.stream_stream(rpc.path, **kwargs)(
                        iter(request), timeout=timeout
                    )
                else:
                    stream = self.channel.unary_stream(rpc.path, **kwargs)(request, timeout=timeout)
                for response in stream:
                    outcome.responses.append(response)
                    if max_events is not None and len(outcome.responses) >= max_events:
                        stream.cancel()
                        break
                outcome.initial = tuple(stream.initial_metadata() or ())
                outcome.trailing = tuple(stream.trailing_metadata() or ())
            else:
                if method.client_streaming:
                    handle = self.channel.stream_unary(rpc.path, **kwargs)
                    response, call = handle.with_call(iter(request), timeout=timeout)
                else:
                    handle = self.channel.unary_unary(rpc.path, **kwargs)
                    response, call = handle.with_call(request, timeout=timeout)
                outcome.responses.append(response)
                outcome.initial = tuple(call.initial_metadata() or ())
                outcome.trailing = tuple(call.trailing_metadata() or ())
        except grpc.RpcError as exc:
            outcome.code = exc.code()
            outcome.details = exc.details() or ""
            outcome.initial = tuple(exc.initial_metadata() or ())
            outcome.trailing = tuple(exc.trailing_metadata() or ())
        outcome.seconds = time.monotonic() - started
        return outcome

    def serving(self) -> bool:
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=self.service.full_name), timeout=10
            )
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def new_log_errors(self) -> list[str]:
        """ERROR/CRITICAL lines (and raw tracebacks) the server logged since the last call."""
        with self.log_path.open("rb") as handle:
            handle.seek(self._log_offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1  # leave a half-written last line for next time
        self._log_offset += end
        found = []
        for line in data[:end].decode(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if line.startswith("Traceback") or "Segmentation fault" in line:
                    found.append(line)
                continue
            if isinstance(record, dict) and record.get("level") in ("ERROR", "CRITICAL"):
                found.append(line[:2000])
        return found

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> int | None:
        """SIGTERM and a bounded wait; the exit code (0 after a clean drain), None if killed."""
        self.channel.close()
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.terminate()
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            return None


def common_args(allowed_uri_prefixes: Sequence[str]) -> list[str]:
    return [
        "--max-message-mb",
        str(MAX_MESSAGE_MB),
        "--max-image-pixels",
        str(MAX_IMAGE_PIXELS),
        "--max-image-side",
        str(MAX_IMAGE_SIDE),
        "--allowed-uri-prefixes",
        ",".join(allowed_uri_prefixes),
        "--cpu-workers",
        "2",
        "--drain-grace-seconds",
        "20",
        "--log-level",
        "INFO",
    ]


def launch(capability: str, argv: Sequence[str], folder: Path) -> subprocess.Popen[bytes]:
    """Starts the server process; `wait_serving` then waits for it."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    # Services that keep state on disk (omni voices and recordings, vision collections) keep it
    # in the test's folder, never in the repository.
    extra = ["--data-dir", str(folder / "data")] if capability in ("omni", "vision") else []
    with (folder / "server.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", f"services.{capability}", *LOOPBACK, *argv, *extra],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )


def wait_serving(
    capability: str, process: subprocess.Popen[bytes], folder: Path, timeout: float
) -> Served:
    """Waits (bounded) for the 'listening' log line, then for health SERVING."""
    log_path = folder / "server.log"
    deadline = time.monotonic() + timeout
    port = None
    while port is None:
        port = _listening_port(log_path)
        _check_running(process, log_path, deadline, capability)
        if port is None:
            time.sleep(0.1)
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=options)
    served = Served(capability, process, port, log_path, channel, capability_service(capability))
    while not served.serving():
        _check_running(process, log_path, deadline, capability)
        time.sleep(0.2)
    return served


def _listening_port(log_path: Path) -> int | None:
    for line in log_path.read_text(errors="replace").splitlines():
        if '"listening"' in line:
            try:
                return int(json.loads(line)["port"])
            except (json.JSONDecodeError, KeyError, ValueError):
                continue
    return None


def _check_running(
    process: subprocess.Popen[bytes], log_path: Path, deadline: float, capability: str
) -> None:
    log = log_path.read_text(errors="replace")[-4000:]
    if process.poll() is not None:
        raise RuntimeError(f"{capability} server exited with {process.returncode}:\n{log}")
    if time.monotonic() > deadline:
        process.kill()
        raise TimeoutError(f"{capability} server not SERVING in time:\n{log}")
