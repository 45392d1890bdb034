"""The generated Go stubs (gen/go/src, GOPATH layout) build, vet and interoperate.

tests/contracts/go/src/mmservecheck imports every generated package, creates each service's
client on a grpc.ClientConn (no call), builds one request per capability, and prints messages
for Python to decode; given `decode <hex>` it decodes a Python-made request. Built in GOPATH
mode with Debian's Go and grpc-go (see TOOLCHAIN.md). No skip: CI installs Go, so a missing
toolchain is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from google.protobuf import json_format

REPO = Path(__file__).resolve().parents[2]
CHECK_GOPATH = REPO / "tests" / "contracts" / "go"
GEN_GOPATH = REPO / "gen" / "go"
DEBIAN_GOPATH = Path("/usr/share/gocode")
GEN_IMPORT = "github.com/mmserve/mmserve/gen/go/mmserve"
PACKAGES = ["mmservecheck", f"{GEN_IMPORT}/..."]


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        pytest.fail(
            "`go` not found on PATH: install it with `make install-system` (Debian golang-go); "
            "the Go stub checks do not skip",
            pytrace=False,
        )
    if not (DEBIAN_GOPATH / "src" / "google.golang.org" / "grpc").is_dir():
        pytest.fail(
            f"{DEBIAN_GOPATH}/src/google.golang.org/grpc missing: `make install-system` "
            "(golang-google-grpc-dev, golang-google-protobuf-dev)",
            pytrace=False,
        )
    if not (GEN_GOPATH / "src" / GEN_IMPORT).is_dir():
        pytest.fail(
            f"no generated Go code under {GEN_GOPATH}/src: run `make protos`", pytrace=False
        )
    return go


def _env() -> dict[str, str]:
    cache = REPO / ".cache" / "go-build"
    cache.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": os.pathsep.join(str(p) for p in (CHECK_GOPATH, GEN_GOPATH, DEBIAN_GOPATH)),
        "GOCACHE": str(cache),
        "GOFLAGS": "",
    }


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300, check=False,
        **kwargs,
    )  # fmt: skip


@pytest.fixture(scope="module")
def go_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = _go()
    binary = tmp_path_factory.mktemp("go") / "mmservecheck"
    proc = _run([go, "build", "-o", str(binary), "mmservecheck"])
    assert proc.returncode == 0, f"go build mmservecheck failed:\n{proc.stdout}{proc.stderr}"
    return binary


def test_go_vet() -> None:
    proc = _run([_go(), "vet", *PACKAGES])
    assert proc.returncode == 0, f"go vet {' '.join(PACKAGES)} failed:\n{proc.stdout}{proc.stderr}"


def test_go_build_generated_packages() -> None:
    proc = _run([_go(), "build", *PACKAGES])
    assert proc.returncode == 0, f"go build failed:\n{proc.stdout}{proc.stderr}"


def test_go_encodes_python_decodes(go_binary: Path, cross_language_check) -> None:
    proc = _run([str(go_binary)])
    assert proc.returncode == 0, f"mmservecheck failed:\n{proc.stdout}{proc.stderr}"
    cross_language_check(proc.stdout, "Go (protoc-gen-go)")


def test_python_encodes_go_decodes(go_binary: Path) -> None:
    from mmserve.common.v1 import media_pb2
    from mmserve.t2i.v1 import t2i_pb2

    request = t2i_pb2.TextToImageRequest()
    request.params.prompt = "Python → Go"
    request.params.seed = 2**64 - 1
    request.params.guidance_scale = 0.0  # optional at zero: Go must keep presence
    request.params.output_format = media_pb2.IMAGE_FORMAT_JPEG
    request.preview.SetInParent()
    proc = _run([str(go_binary), "decode", request.SerializeToString().hex()])
    assert proc.returncode == 0, f"mmservecheck decode failed:\n{proc.stdout}{proc.stderr}"
    decoded = json_format.Parse(proc.stdout, t2i_pb2.TextToImageRequest())
    assert decoded == request, f"Go decoded {proc.stdout!r}, expected\n{request}"
    assert decoded.params.HasField("guidance_scale")
    assert decoded.HasField("preview")
