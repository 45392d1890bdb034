"""`python -m gateway.stack` as a user runs it: it starts the services and Envoy, prints the edge
address once everything is SERVING, and Ctrl-C stops every process gracefully."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from gateway.processes import REPO
from tests.e2e.support import SLEEPY, T2I, grpcurl


def wait_for_line(path: Path, pattern: str, process: subprocess.Popen[bytes], timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, path.read_text(errors="replace"))
        if found:
            return found
        assert process.poll() is None, f"stack exited early:\n{path.read_text()}"
        time.sleep(0.1)
    raise TimeoutError(f"no {pattern!r} in {timeout}s:\n{path.read_text()}")


def refuses(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_stack_starts_prints_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    out = tmp_path / "stack.out"
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "gateway.stack",
        "--only", "t2i", "--module", f"t2i={SLEEPY}", "--replicas", "t2i=2",
        "--service-args", "t2i=--step-seconds 0.01",
        "--port", "0", "--admin-port", "0", "--run-dir", str(run_dir), "--stop-grace", "15",
    ]  # fmt: skip
    with out.open("wb") as sink:
        process = subprocess.Popen(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
    try:
        banner = wait_for_line(out, r"mmserve edge: 127\.0\.0\.1:(\d+)", process, 120)
        edge_port = int(banner.group(1))
        text = out.read_text()
        assert f"grpcurl -plaintext 127.0.0.1:{edge_port} list" in text
        replicas = re.search(r"t2i: 127\.0\.0\.1:(\d+), 127\.0\.0\.1:(\d+)", text)
        assert replicas, text
        listed = grpcurl(["-plaintext", f"127.0.0.1:{edge_port}", "list"])
        assert T2I in listed.stdout.split(), listed.stderr
        # The example the banner prints works as printed.
        health = grpcurl(
            [
                "-plaintext", "-d", json.dumps({"service": T2I}),
                f"127.0.0.1:{edge_port}", "grpc.health.v1.Health/Check",
            ]
        )  # fmt: skip
        assert json.loads(health.stdout) == {"status": "SERVING"}

        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert process.wait(timeout=60) == 0, out.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert out.read_text().rstrip().endswith("stopped")
    # Every process is gone: nothing listens any more.
    ports = [edge_port, int(replicas.group(1)), int(replicas.group(2))]
    assert all(refuses(port) for port in ports)
    # The services drained and exited on their own (SIGTERM), not by SIGKILL.
    for index in (0, 1):
        log = (run_dir / "logs" / f"t2i-{index}.log").read_text()
        assert '"event": "stopped"' in log, log


def test_stack_refuses_unknown_capabilities(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.stack", "--only", "nope", "--run-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "unknown capability 'nope'" in proc.stderr
