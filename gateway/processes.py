"""Child processes of the local stack: start with a log file, find their ports, stop them with
SIGTERM then SIGKILL after a grace period. Every wait is bounded."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Children must not outlive a launcher that was killed (SIGKILL leaves it no time to clean up):
# util-linux's setpriv sets the parent-death signal and execs the command. (A preexec_fn would
# make subprocess fork() the whole parent, and grpc's fork handlers abort such children.)
_SETPRIV = shutil.which("setpriv")


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tool(name: str) -> str:
    """A command of the virtualenv (envoy, grpcurl), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"`{name}` not found beside {sys.executable} or on PATH")
    return found


@dataclass
class Child:
    """One started process; its output goes to `log_path`."""

    name: str
    argv: list[str]
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            prefix = [_SETPRIV, "--pdeathsig", "TERM", "--"] if _SETPRIV else []
            self.process = subprocess.Popen(
                [*prefix, *self.argv],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                # Own session: a terminal's Ctrl-C reaches the launcher only, which then stops
                # the children in order.
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def event(self, name: str) -> dict[str, Any] | None:
        """The first JSON log line with "event": name (the services log 'listening', 'serving')."""
        for line in self.log().splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("event") == name:
                return entry
        return None

    def wait_event(self, name: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.event(name)
            if found is not None:
                return found
            if not self.running():
                raise RuntimeError(f"{self.name} exited before '{name}':\n{self.tail()}")
            time.sleep(0.05)
        raise TimeoutError(f"{self.name}: no '{name}' within {timeout:.0f}s:\n{self.tail()}")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.running():
            assert self.process is not None
            self.process.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        """Exit code, or None if still running after `timeout`."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None


def stop_all(children: Sequence[Child], grace: float) -> None:
    """SIGTERM to all at once, then SIGKILL what is left after `grace` seconds."""
    for child in children:
        child.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        if child.wait(max(0.0, deadline - time.monotonic())) is None:
            child.signal(signal.SIGKILL)
            child.wait(10)
