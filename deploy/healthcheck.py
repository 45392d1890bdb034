"""grpc.health.v1 probe for container HEALTHCHECKs (Docker, Compose) and exec probes.

Exits 0 when the named service reports SERVING, 1 otherwise (NOT_SERVING while the model loads
or the server drains, an unknown service name, no answer in time). Kubernetes does not need it:
its probes speak gRPC health natively.

    python deploy/healthcheck.py                        # MMSERVE_PORT, MMSERVE_HEALTH_SERVICE
    python deploy/healthcheck.py --port 50053 --service mmserve.vision.v1.VisionService
    python deploy/healthcheck.py --http http://127.0.0.1:8090/v1/models   # an HTTP service
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# Not MMSERVE_-prefixed settings of the server; read here only. The server ignores unknown
# MMSERVE_* variables, so one environment serves both.
SERVICE_ENV = "MMSERVE_HEALTH_SERVICE"
PORT_ENV = "MMSERVE_PORT"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1", help="Address of the server.")
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get(PORT_ENV, "50051")), help="gRPC port."
    )
    parser.add_argument(
        "--service",
        default=os.environ.get(SERVICE_ENV, ""),
        help="Health service name ('' is the whole server).",
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="Seconds to wait for a reply.")
    parser.add_argument(
        "--http", default="", help="Probe this URL instead (HTTP services): healthy on a 2xx."
    )
    return parser.parse_args(argv)


def check(host: str, port: int, service: str, timeout: float) -> tuple[bool, str]:
    """(serving, what was seen) for one Health/Check call."""
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            return False, f"{getattr(code, 'name', 'ERROR')}: {getattr(exc, 'details', str)()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def check_http(url: str, timeout: float) -> tuple[bool, str]:
    """(healthy, what was seen) for one GET."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return 200 <= reply.status < 300, f"HTTP {reply.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except OSError as exc:
        return False, f"{type(exc).__name__}: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.http:
        serving, seen = check_http(args.http, args.timeout)
        print(f"{args.http}: {seen}")
        return 0 if serving else 1
    serving, seen = check(args.host, args.port, args.service, args.timeout)
    # One line: Docker keeps the probe's output in `docker inspect` for troubleshooting.
    print(f"{args.host}:{args.port} {args.service or '<server>'}: {seen}")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
