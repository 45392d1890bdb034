"""A Go client built from the generated Go stubs (gen/go, GOPATH mode with Debian's grpc-go)
calls grpc.health.v1, the vision service and the t2i service (unary and streaming) through
Envoy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.catalog import CAPABILITIES
from gateway.processes import REPO
from gateway.stack import Stack
from tests.e2e.support import T2I

GOPATH = [REPO / "tests" / "e2e" / "go", REPO / "gen" / "go", Path("/usr/share/gocode")]


def _go_env() -> dict[str, str]:
    cache = REPO / ".cache" / "go-build"
    cache.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": os.pathsep.join(str(p) for p in GOPATH),
        "GOCACHE": str(cache),
        "GOFLAGS": "",
    }


@pytest.fixture(scope="module")
def edgeclient(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.fail("`go` not found: `make install-system` (Debian golang-go)", pytrace=False)
    binary = tmp_path_factory.mktemp("go") / "edgeclient"
    for cmd in ([go, "vet", "edgeclient"], [go, "build", "-o", str(binary), "edgeclient"]):
        proc = subprocess.run(
            cmd, cwd=REPO, env=_go_env(), capture_output=True, text=True, timeout=300, check=False
        )
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout}{proc.stderr}"
    return binary


def run(binary: Path, *args: str) -> list[dict[str, object]]:
    proc = subprocess.run(
        [str(binary), *args], capture_output=True, text=True, timeout=90, check=False
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert proc.returncode == 0, f"{lines}\n{proc.stderr}"
    return lines


def test_go_client_calls_health_and_t2i(edgeclient: Path, sleepy_stack: Stack) -> None:
    lines = run(edgeclient, "-addr", sleepy_stack.address, "-health", f"{T2I},", "-call", "t2i")
    assert lines[0] == {"health": T2I, "status": "SERVING"}
    unary = lines[1]
    assert unary["rpc"] == "TextToImage"
    assert unary["png"] == "PNG"
    assert unary["job_id"]
    assert lines[2] == {
        "rpc": "StreamTextToImage",
        "events": ["Accepted", "Step", "Step", "Result"],
    }


def test_go_client_calls_health_and_vision(edgeclient: Path, real_stack: Stack) -> None:
    names = [spec.service for spec in CAPABILITIES.values()]
    health = ",".join(names)
    lines = run(edgeclient, "-addr", real_stack.address, "-health", health, "-call", "vision")
    assert lines[: len(names)] == [{"health": n, "status": "SERVING"} for n in names]
    embedded = lines[len(names)]
    assert embedded["rpc"] == "EmbedTexts"
    assert embedded["count"] == 1
    assert embedded["dimension"] > 0


def test_go_client_sees_unknown_service_health(edgeclient: Path, sleepy_stack: Stack) -> None:
    proc = subprocess.run(
        [str(edgeclient), "-addr", sleepy_stack.address, "-health", "mmserve.nope.v1.Nope"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert json.loads(proc.stdout.splitlines()[-1])["code"] == "NotFound"
