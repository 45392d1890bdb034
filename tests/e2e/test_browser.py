"""A real headless Chromium page calls the services through Envoy with the generated TS client
and connect-web's grpc-web transport: a unary call, a server stream whose progress events
arrive as they happen, and a Cancel button whose CancelJob frees the server's executor."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.processes import REPO
from gateway.stack import Stack
from mmserve.common.v1 import job_pb2
from mmserve.t2i.v1 import t2i_pb2_grpc
from tests.e2e.conftest import WebServer
from tests.e2e.support import REPLICA_HEADER, t2i_request

WEB = Path(__file__).with_name("web")
NODE_MODULES = REPO / "tools" / "node_modules"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
    return subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _require_toolchain() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found: install Node.js 20+", pytrace=False)
    if not (NODE_MODULES / "playwright-core").is_dir():
        pytest.fail("tools/node_modules lacks playwright-core: run `make install-node`")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: apt-get install -y chromium", pytrace=False)
    return node


@pytest.fixture(scope="module")
def page(web_server: WebServer) -> str:
    """Type-checks and bundles the page's client, and serves it from the allowed origin."""
    _require_toolchain()
    checked = _run([str(NODE_MODULES / ".bin" / "tsc"), "-p", str(WEB.relative_to(REPO))], 180)
    assert checked.returncode == 0, f"tsc:\n{checked.stdout}{checked.stderr}"
    bundled = _run(
        [
            str(NODE_MODULES / ".bin" / "esbuild"),
            str(WEB / "client.ts"),
            "--bundle",
            "--format=iife",
            "--target=es2020",
            f"--outfile={web_server.root / 'bundle.js'}",
        ],
        120,
    )
    assert bundled.returncode == 0, f"esbuild:\n{bundled.stderr}"
    shutil.copy(WEB / "index.html", web_server.root / "index.html")
    return f"{web_server.origin}/index.html"


def open_page(url: str) -> dict[str, Any]:
    """Runs the page in Chromium until it publishes its results."""
    started = time.monotonic()
    proc = _run([_require_toolchain(), str(WEB / "run-page.cjs"), url], 180)
    assert proc.returncode == 0, f"page run failed:\n{proc.stdout}\n{proc.stderr}"
    results: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "fatal" not in results, f"{results}\n{proc.stderr}"
    results["wall_seconds"] = time.monotonic() - started
    return results


@pytest.fixture(scope="module")
def page_results(page: str, sleepy_stack: Stack) -> dict[str, Any]:
    """t2i on the sleepy engine (0.2 s per step): unary, error, timed stream, cancel."""
    return open_page(f"{page}?edge=http://{sleepy_stack.address}")


def test_vision_from_the_browser(page: str, real_stack: Stack) -> None:
    """The real vision service: texts, and an image drawn on a canvas sent as PNG bytes."""
    results = open_page(f"{page}?edge=http://{real_stack.address}&mode=vision")
    vision = results["vision"]
    assert vision["texts"] == 2
    assert vision["textDimension"] == vision["imageDimension"] > 0
    assert vision["imageValues"] == vision["imageDimension"]


def test_unary_call_and_error_from_the_browser(page_results: dict[str, Any]) -> None:
    unary = page_results["unary"]
    assert unary["png"] is True
    assert unary["jobId"], "the mmserve-job-id header is exposed to the page by CORS"
    # A trailers-only error keeps its code and message through grpc-web and CORS.
    assert page_results["unaryError"] == {"code": 3, "message": "params.width: must be <= 64"}


def test_stream_progress_arrives_as_it_happens(page_results: dict[str, Any]) -> None:
    events = page_results["stream"]
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "accepted"
    assert kinds[-1] == "result"
    steps = [e["ms"] for e in events if e["kind"] == "step"]
    assert len(steps) == 5
    # The server sends a step every 200 ms; a client that buffered the response would see them
    # all at once at the end.
    # (Median, not minimum: a loaded machine may delay one event and bunch it with the next.)
    gaps = [b - a for a, b in itertools.pairwise(steps)]
    assert statistics.median(gaps) >= 100, gaps
    assert steps[-1] - steps[0] >= 500, steps


async def test_cancel_button_frees_the_executor(
    page_results: dict[str, Any], sleepy_stack: Stack
) -> None:
    cancelled = page_results["cancelled"]
    assert cancelled["error"]["code"] == 1, cancelled  # Code.Canceled in the page
    assert cancelled["steps"] < 100
    assert page_results["cancelReply"]["jobId"] == cancelled["jobId"]
    async with grpc.aio.insecure_channel(sleepy_stack.address) as channel:
        stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
        pin = ((REPLICA_HEADER, cancelled["replica"]),)
        job = await stub.GetJob(
            job_pb2.GetJobRequest(job_id=cancelled["jobId"]), metadata=pin, timeout=10
        )
        assert job.job.state == job_pb2.JOB_STATE_CANCELLED
        assert job.job.progress.step < 100
        # The 100-step job (20 s) no longer holds the single-flight executor: a new job runs at
        # once.
        started = time.monotonic()
        call = stub.TextToImage(t2i_request(steps=1), timeout=30)
        await call
        assert time.monotonic() - started < 5
        # The whole page, long job included, took far less than that job would have.
        assert page_results["wall_seconds"] < 60
