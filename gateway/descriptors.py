"""The descriptor set Envoy's gRPC-JSON transcoder reads: every contract in protos/, the
google.rpc error details (so errors come out as JSON with their field violations) and
grpc.health.v1 (so curl can ask for health too)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2

REPO = Path(__file__).resolve().parents[1]
PROTOS = REPO / "protos"
DEFAULT_OUT = REPO / "build" / "gateway" / "mmserve.binpb"
# Types the transcoder must know to print grpc-status-details-bin as JSON.
ERROR_PROTOS = ("google/rpc/error_details.proto", "google/rpc/status.proto")


def _googleapis_root() -> Path:
    """Where googleapis-common-protos installed its .proto files (beside its _pb2 modules)."""
    spec = importlib.util.find_spec("google.rpc")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("googleapis-common-protos is not installed")
    return Path(next(iter(spec.submodule_search_locations))).parent.parent


def build_descriptor_set(out: Path = DEFAULT_OUT) -> Path:
    """Compiles the contracts with grpc_tools.protoc (imports included) into `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    protos = sorted(p.relative_to(PROTOS).as_posix() for p in PROTOS.rglob("*.proto"))
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "--include_imports",
        f"--descriptor_set_out={out}",
        f"-I{PROTOS}",
        f"-I{_googleapis_root()}",
        *protos,
        *ERROR_PROTOS,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"protoc failed ({proc.returncode}): {proc.stderr.strip()}")
    # grpcio-health-checking ships no .proto file, only its compiled descriptor: append that.
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    if all(f.package != "grpc.health.v1" for f in fds.file):
        health_pb2.DESCRIPTOR.CopyToProto(fds.file.add())
    out.write_bytes(fds.SerializeToString())
    return out


if __name__ == "__main__":
    print(build_descriptor_set(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT))
