"""TLS: the clients verify a server against given root certificates (PEM bytes or a file), with a
server-name override, and refuse one they cannot verify. The server is a real grpc TLS server
with the standard health service and a self-signed certificate made by openssl."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mmserve_client import Unavailable, VisionClient, aio

NAME = "mmserve.test"
SERVICE = "mmserve.vision.v1.VisionService"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={NAME}",
         "-addext", f"subjectAltName=DNS:{NAME}"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield port, cert
    finally:
        server.stop(grace=None)


def test_verified_tls_with_root_certificates(tls_server: tuple[int, Path]) -> None:
    port, cert = tls_server
    with VisionClient(f"127.0.0.1:{port}", root_certificates=cert, server_name=NAME) as client:
        assert client.connection.tls  # root certificates imply TLS
        assert client.health() == "serving"
    pem = cert.read_bytes()
    with VisionClient(f"https://127.0.0.1:{port}", root_certificates=pem, server_name=NAME) as c:
        assert c.health() == "serving"


def test_unverifiable_server_is_refused(tls_server: tuple[int, Path]) -> None:
    port, _ = tls_server
    with VisionClient(f"https://127.0.0.1:{port}", server_name=NAME) as client:  # system roots
        with pytest.raises(Unavailable):
            client.health(timeout=5)
    with VisionClient(f"127.0.0.1:{port}") as plain:  # no TLS at all
        with pytest.raises(Unavailable):
            plain.health(timeout=5)


async def test_async_client_over_tls(tls_server: tuple[int, Path]) -> None:
    port, cert = tls_server
    async with aio.VisionClient(
        f"127.0.0.1:{port}", root_certificates=cert, server_name=NAME
    ) as client:
        assert await client.health() == "serving"
