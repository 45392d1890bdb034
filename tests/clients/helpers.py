"""Helpers of the client tests: inputs, bounded waits and running the CLI as a subprocess."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmserve_client import Client, Job, JobState
from tests.clients.conftest import SDK_PATH

REPO = SDK_PATH.parents[1]


def gradient(
    width: int = 64, height: int = 64, color: tuple[int, int, int] = (200, 40, 40)
) -> np.ndarray[Any, Any]:
    """An RGB uint8 image with some structure."""
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    base = np.array(color, dtype=np.float32)[None, None, :]
    array = np.clip(base * 0.5 + ramp * 0.5, 0, 255).astype(np.uint8)
    return np.broadcast_to(array, (height, width, 3)).copy()


def png(width: int = 64, height: int = 64, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gradient(width, height, color)).save(buffer, "PNG")
    return buffer.getvalue()


def wait_for_state(client: Client, job_id: str, state: JobState, timeout: float = 10.0) -> Job:
    deadline = time.monotonic() + timeout
    job = client.get_job(job_id)
    while job.state is not state and time.monotonic() < deadline:
        time.sleep(0.05)
        job = client.get_job(job_id)
    assert job.state is state, job
    return job


def wait_for_end(client: Client, job_id: str, timeout: float = 10.0) -> Job:
    """The job once it is no longer queued or running."""
    deadline = time.monotonic() + timeout
    job = client.get_job(job_id)
    while job.state in (JobState.QUEUED, JobState.RUNNING) and time.monotonic() < deadline:
        time.sleep(0.05)
        job = client.get_job(job_id)
    assert job.state not in (JobState.QUEUED, JobState.RUNNING), job
    return job


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def cli_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(SDK_PATH), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    env.pop("MMSERVE_TARGET", None)
    env.pop("MMSERVE_API_KEY", None)
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmserve_client", *args]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> CliResult:
    """`mmserve ARGS` in a subprocess, bounded."""
    done = subprocess.run(
        cli_command(*args),
        cwd=cwd or REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)
