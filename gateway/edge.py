"""The edge service: grpc.health.v1 and server reflection for every capability behind Envoy.

Envoy routes by path, so /grpc.health.v1.Health/Check for "mmserve.vision.v1.VisionService"
and for "mmserve.t2i.v1.ImageGenerationService" arrive on the same route, and reflection
through one port must list all four contracts. No capability process can answer either (each
knows only itself), so Envoy sends both prefixes here:

- reflection: this process imports every generated contract and serves their descriptors;
- health: a capability's service name is SERVING while Envoy has at least one healthy replica
  for it (active gRPC health check passed, not ejected as an outlier), read from Envoy's admin
  interface on loopback. "" is SERVING when every routed capability is; "mmserve.edge" is this
  process itself (what Envoy's own check of the edge cluster asks).

    python -m gateway.edge --port 50050 --envoy-admin http://127.0.0.1:9901 --capabilities t2i
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.catalog import CAPABILITIES, CapabilitySpec, capability
from gateway.render import DEFAULT_EDGE_PORT, EDGE_HEALTH_SERVICE
from services.runtime.logs import configure_logging  # the services' JSON log lines

log = logging.getLogger("mmserve.edge")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Envoy's per-host flags that take a host out of load balancing.
_FAILED_FLAGS = (
    "failed_active_health_check",
    "failed_outlier_check",
    "failed_eds_health_check",
    "pending_active_hc",
    "pending_dynamic_removal",
    "excluded_via_immediate_hc_fail",
    "active_hc_timeout",
)


def healthy_hosts(clusters_json: Mapping[str, Any]) -> dict[str, int]:
    """Healthy host count per cluster from Envoy's `/clusters?format=json`."""
    counts: dict[str, int] = {}
    for cluster in clusters_json.get("cluster_statuses", []):
        healthy = 0
        for host in cluster.get("host_statuses", []):
            status = host.get("health_status", {})
            if status.get("eds_health_status", "HEALTHY") not in ("HEALTHY", "UNKNOWN"):
                continue
            if any(status.get(flag) for flag in _FAILED_FLAGS):
                continue
            healthy += 1
        counts[cluster["name"]] = healthy
    return counts


def fetch_clusters(admin_url: str, timeout: float) -> dict[str, Any]:
    with urllib.request.urlopen(f"{admin_url}/clusters?format=json", timeout=timeout) as reply:
        data: dict[str, Any] = json.load(reply)
    return data


class EdgeService:
    """The grpc.aio server of the edge; tests run it in-process, `main` as a process."""

    def __init__(
        self,
        specs: Iterable[CapabilitySpec],
        envoy_admin: str,
        host: str = "127.0.0.1",
        port: int = DEFAULT_EDGE_PORT,
        poll_seconds: float = 0.5,
    ) -> None:
        self.specs = tuple(specs)
        self.envoy_admin = envoy_admin.rstrip("/")
        self.poll_seconds = poll_seconds
        self.server = grpc.aio.server()
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [spec.descriptor.full_name for spec in self.specs]  # imports the contracts
        reflection.enable_server_reflection(
            (*names, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise RuntimeError(f"could not bind {host}:{port}")
        self._statuses: dict[str, int] = {}
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for name in ("", *(spec.service for spec in self.specs)):
            await self._set(name, NOT_SERVING)
        await self.health.set(EDGE_HEALTH_SERVICE, SERVING)
        await self.server.start()
        log.info(json.dumps({"event": "listening", "capability": "edge", "port": self.port}))
        self._poller = asyncio.create_task(self._poll())

    async def _set(self, name: str, status: int) -> None:
        if self._statuses.get(name) != status:
            self._statuses[name] = status
            await self.health.set(name, status)
            log.info(json.dumps({"event": "health", "service": name or '""', "status": status}))

    async def refresh(self) -> None:
        try:
            data = await asyncio.to_thread(fetch_clusters, self.envoy_admin, self.poll_seconds * 4)
            counts = healthy_hosts(data)
        except (OSError, ValueError, KeyError) as exc:
            # Without Envoy's view nothing can be vouched for.
            log.warning("envoy admin unreachable: %s", exc)
            counts = {}
        serving = [counts.get(spec.name, 0) > 0 for spec in self.specs]
        for spec, ok in zip(self.specs, serving, strict=True):
            await self._set(spec.service, SERVING if ok else NOT_SERVING)
        await self._set("", SERVING if all(serving) else NOT_SERVING)

    async def _poll(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.poll_seconds)

    async def stop(self, grace: float = 2.0) -> None:
        await self.health.enter_graceful_shutdown()
        if self._poller is not None:
            self._poller.cancel()
        await self.server.stop(grace)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.edge",
        description="Health and reflection of every mmserve capability behind Envoy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind.")
    parser.add_argument("--port", type=int, default=DEFAULT_EDGE_PORT, help="gRPC port; 0 free.")
    parser.add_argument(
        "--envoy-admin", default="http://127.0.0.1:9901", help="Envoy admin URL (loopback)."
    )
    parser.add_argument(
        "--capabilities",
        default=",".join(CAPABILITIES),
        help="Capabilities routed by Envoy (cluster name = capability name).",
    )
    parser.add_argument(
        "--poll-seconds", type=float, default=0.5, help="How often to read Envoy's host health."
    )
    parser.add_argument("--log-level", default="INFO", help="Log level.")
    return parser


async def serve(args: argparse.Namespace) -> int:
    specs = [capability(name) for name in args.capabilities.split(",") if name]
    service = EdgeService(specs, args.envoy_admin, args.host, args.port, args.poll_seconds)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    await stop.wait()
    await service.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        return asyncio.run(serve(args))
    except ValueError as exc:
        print(f"gateway.edge: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
