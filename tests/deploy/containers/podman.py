"""Driving podman and podman-compose from the container tests: bounded commands, health
checks run on demand (podman schedules health checks with systemd timers; where there is no
systemd nothing runs them, so the tests run each image's check themselves) and logs for
failure messages."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PREFIX = "localhost/mmserve"
TAG = "0.1.0"
CAPABILITY_IMAGES = ("t2i", "vl", "vision", "omni")


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
    return proc


def available() -> str:
    """Why the container tests cannot run here, or '' when they can."""
    if shutil.which("podman") is None:
        return "podman is not installed (make install-containers)"
    missing = [
        name
        for name in (*CAPABILITY_IMAGES, "edge")
        if podman("image", "exists", f"{PREFIX}/{name}:{TAG}-cpu", check=False).returncode
    ]
    if podman("image", "exists", f"{PREFIX}/envoy:{TAG}", check=False).returncode:
        missing.append("envoy")
    return f"images not built: {', '.join(missing)} (make images)" if missing else ""


def compose_command() -> list[str]:
    beside = Path(sys.executable).with_name("podman-compose")
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "podman_compose"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def state(container: str) -> str:
    return podman("inspect", "--format", "{{.State.Status}}", container, check=False).stdout.strip()


def exit_code(container: str) -> int:
    out = podman("inspect", "--format", "{{.State.ExitCode}}", container).stdout.strip()
    return int(out)


def logs(container: str, tail: int = 60) -> str:
    proc = podman("logs", "--tail", str(tail), container, check=False)
    return proc.stdout + proc.stderr


def health_check(container: str) -> tuple[bool, str]:
    """One run of the container's own HEALTHCHECK (as the image or the manifest defines it)."""
    try:
        proc = podman("healthcheck", "run", container, check=False, timeout=120)
    except subprocess.TimeoutExpired:
        # An exec into a container can take minutes on an overloaded machine: not yet healthy.
        return False, "health check did not finish in 120 s"
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def wait_healthy(containers: Sequence[str], timeout: float) -> None:
    """Until each container's health check passes; fails at once if one stops running."""
    deadline = time.monotonic() + timeout
    pending = list(containers)
    seen = ""
    while pending:
        for container in list(pending):
            if state(container) not in ("running", "starting"):
                raise AssertionError(f"{container} is {state(container)}:\n{logs(container)}")
            healthy, seen = health_check(container)
            if healthy:
                pending.remove(container)
        if pending and time.monotonic() > deadline:
            details = "\n".join(f"--- {c}\n{logs(c)}" for c in pending)
            raise AssertionError(
                f"not healthy after {timeout:.0f} s: {pending} ({seen})\n{details}"
            )
        if pending:
            time.sleep(3)
