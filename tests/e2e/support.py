"""Helpers of the edge tests: the sleepy service behind Envoy, grpcurl, HTTP/JSON calls and
the replica header. Every wait is bounded."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from gateway.edge import fetch_clusters
from gateway.processes import REPO, tool
from mmserve.t2i.v1 import t2i_pb2

SLEEPY = "tests.support.sleepy_service"
T2I = "mmserve.t2i.v1.ImageGenerationService"
REPLICA_HEADER = "mmserve-replica"


def t2i_request(prompt: str = "a red fox", steps: int = 1, width: int = 8) -> Any:
    return t2i_pb2.TextToImageRequest(
        params=t2i_pb2.GenerationParams(prompt=prompt, num_inference_steps=steps, width=width)
    )


def replica_value(address: str) -> str:
    """The header value that pins a call to a replica (Envoy's header-based session state)."""
    return base64.b64encode(address.encode()).decode()


def replica_of(value: str | None) -> str:
    return base64.b64decode(value or "").decode()


async def read_into(call: Any, events: list[Any]) -> None:
    """Reads a gRPC stream to its end with read() (so it may follow earlier reads), keeping
    what came before an error."""
    while (event := await call.read()) is not grpc.aio.EOF:
        events.append(event)


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost, made as gateway/README.md says."""
    cert, key = directory / "edge.crt", directory / "edge.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def grpcurl(args: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("grpcurl"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )


@dataclass
class HttpReply:
    status: int
    headers: dict[str, str]
    body: str
    # Arrival time (monotonic) of each body line, for streams.
    lines: list[tuple[float, str]]

    def json(self) -> Any:
        return json.loads(self.body)

    def json_lines(self) -> list[Any]:
        return [json.loads(text) for _, text in self.lines if text.strip()]


def post_json(
    url: str, body: Any, timeout: float = 30, headers: dict[str, str] | None = None
) -> HttpReply:
    """POSTs JSON and reads the reply line by line as it arrives (HTTP/1.1, like curl)."""
    data = json.dumps(body).encode()
    sent = {"content-type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data=data, method="POST", headers=sent)
    try:
        reply = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        reply = err
    with reply:
        lines: list[tuple[float, str]] = []
        for raw in reply:
            lines.append((time.monotonic(), raw.decode()))
        return HttpReply(
            status=reply.status,
            headers={k.lower(): v for k, v in reply.headers.items()},
            body="".join(text for _, text in lines),
            lines=lines,
        )


def host_status(admin_url: str, cluster_name: str, address: str) -> dict[str, Any]:
    """Envoy's health flags for one upstream host (admin /clusters)."""
    for cluster in fetch_clusters(admin_url, 5)["cluster_statuses"]:
        if cluster["name"] != cluster_name:
            continue
        for host in cluster.get("host_statuses", []):
            socket = host["address"]["socket_address"]
            if f"{socket['address']}:{socket['port_value']}" == address:
                return dict(host["health_status"])
    raise AssertionError(f"{address} not in Envoy's {cluster_name} cluster")


def in_rotation(status: dict[str, Any]) -> bool:
    """No failure flag set (eds_health_status is the declared state, not a failure)."""
    return not any(v is True for k, v in status.items() if k != "eds_health_status")
