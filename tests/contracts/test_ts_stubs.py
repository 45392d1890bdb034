"""The generated TypeScript stubs (gen/ts, protoc-gen-es v2) type-check and interoperate.

tests/contracts/ts/check.ts is type-checked strictly by tools/node_modules' tsc: every service
descriptor works with connect-web's createClient + createGrpcWebTransport, every capability's
request builds with create(), and a streaming loop narrows on the `event` oneof. encode.ts is
compiled and run by node; Python decodes what it prints (binary and JSON).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TS_DIR = REPO / "tests" / "contracts" / "ts"
TSC = REPO / "tools" / "node_modules" / ".bin" / "tsc"
GEN_TS = REPO / "gen" / "ts" / "mmserve"


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=240, check=False, **kwargs
    )


def _require_toolchain() -> None:
    if not TSC.exists():
        pytest.fail(f"{TSC} not found: run `make install-node` (npm ci in tools/)", pytrace=False)
    if not GEN_TS.is_dir():
        pytest.fail(f"{GEN_TS} not found: run `make protos`", pytrace=False)


def test_tsc_strict_type_check() -> None:
    _require_toolchain()
    proc = _run([str(TSC), "-p", str(TS_DIR.relative_to(REPO))])
    assert proc.returncode == 0, (
        f"tsc -p tests/contracts/ts failed (rc {proc.returncode}):\n{proc.stdout}{proc.stderr}"
    )


def test_typescript_encodes_python_decodes(tmp_path: Path, cross_language_check) -> None:
    _require_toolchain()
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found: install Node.js 20+ (see DEVELOPERS.md)", pytrace=False)
    out = tmp_path / "js"
    proc = _run(
        [
            str(TSC),
            "-p",
            str((TS_DIR / "tsconfig.emit.json").relative_to(REPO)),
            "--outDir",
            str(out),
        ]
    )
    assert proc.returncode == 0, f"tsc emit failed:\n{proc.stdout}{proc.stderr}"
    script = out / "tests" / "contracts" / "ts" / "encode.js"
    assert script.is_file(), f"tsc emitted no {script}: {sorted(p.name for p in out.rglob('*'))}"
    # The emitted CommonJS finds @bufbuild/protobuf through NODE_PATH (gen/ts has no
    # node_modules of its own).
    env = {**os.environ, "NODE_PATH": str(REPO / "tools" / "node_modules")}
    proc = _run([node, str(script)], env=env)
    assert proc.returncode == 0, f"node encode.js failed:\n{proc.stdout}{proc.stderr}"
    cross_language_check(proc.stdout, "TypeScript (protoc-gen-es)")
