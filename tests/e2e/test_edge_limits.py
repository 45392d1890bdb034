"""What the edge lets through: messages up to the services' 64 MiB limit (gRPC and HTTP/JSON),
and the same routes over TLS with a self-signed certificate."""

from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from gateway.processes import Child, free_port, tool
from gateway.render import render
from gateway.stack import Stack
from mmserve.t2i.v1 import t2i_pb2_grpc
from tests.e2e.support import T2I, grpcurl, make_cert, t2i_request

MIB = 1024 * 1024


async def test_large_messages_pass_up_to_the_service_limit(sleepy_stack: Stack) -> None:
    options = [("grpc.max_send_message_length", 80 * MIB)]
    async with grpc.aio.insecure_channel(sleepy_stack.address, options=options) as channel:
        stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
        # 20 MiB crosses Envoy (flow control, no buffering cap) and reaches the service.
        reply = await stub.TextToImage(t2i_request(prompt="x" * (20 * MIB)), timeout=60)
        assert reply.result.images
        # Past the services' 64 MiB the service itself refuses it.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.TextToImage(t2i_request(prompt="x" * (70 * MIB)), timeout=60)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_large_json_bodies_are_transcoded(sleepy_stack: Stack) -> None:
    body = json.dumps({"params": {"prompt": "x" * (20 * MIB), "numInferenceSteps": 1}}).encode()
    request = urllib.request.Request(
        f"http://{sleepy_stack.address}/{T2I}/TextToImage",
        data=body,
        method="POST",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        assert reply.status == 200
        assert json.load(reply)["result"]["images"]


def _wait_listening(port: int, envoy: Child, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert envoy.running(), envoy.tail()
        time.sleep(0.1)
    raise TimeoutError(envoy.tail())


@pytest.fixture(scope="module")
def tls_edge(
    sleepy_stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """A second Envoy in front of the same replica and edge service, terminating TLS."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = make_cert(directory)
    port = free_port()
    config = replace(
        sleepy_stack.edge_config(),
        listen_port=port,
        admin_port=free_port(),
        tls_cert=str(cert),
        tls_key=str(key),
    )
    path = directory / "envoy-tls.yaml"
    path.write_text(render(config))
    envoy = Child(
        "envoy-tls",
        [tool("envoy"), "-c", str(path), "--concurrency", "1", "--disable-hot-restart"],
        directory / "envoy.log",
    ).start()
    try:
        _wait_listening(port, envoy)
        yield f"127.0.0.1:{port}", cert
    finally:
        envoy.signal()
        envoy.wait(10)


def test_tls_termination(tls_edge: tuple[str, Path]) -> None:
    address, cert = tls_edge
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(address, credentials) as channel:
        stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
        reply = stub.TextToImage(t2i_request(), timeout=30)
        assert reply.result.images
    listed = grpcurl(["-cacert", str(cert), address, "list"])
    assert T2I in listed.stdout.split(), listed.stderr
    context = ssl.create_default_context(cafile=str(cert))
    request = urllib.request.Request(
        f"https://{address}/{T2I}/GetModelInfo",
        data=b"{}",
        method="POST",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30, context=context) as reply:
        assert json.load(reply)["modelInfo"]["family"] == "sleepy"
