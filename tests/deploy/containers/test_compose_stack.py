"""deploy/compose/compose.yaml's cpu profile run by podman-compose on the built images: every
capability and Envoy on the built-in models; reflection, health and one real call per
capability through the edge container; a capability container stopped under load drains."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.catalog import CAPABILITIES
from mmserve.vision.v1 import vision_pb2, vision_pb2_grpc
from tests.deploy.containers.podman import (
    CAPABILITY_IMAGES,
    PREFIX,
    REPO,
    TAG,
    compose_command,
    exit_code,
    free_port,
    logs,
    podman,
    state,
    wait_healthy,
)
from tests.e2e.samples import SAMPLES
from tests.e2e.support import grpcurl

PROJECT = "mmserve-deploytest"
FILES = ("deploy/compose/compose.yaml", "deploy/compose/compose.podman.yaml")
# Building the four tiny models at once on a small shared machine takes minutes.
HEALTHY_WITHIN_S = 900


@dataclass(frozen=True)
class ComposeStack:
    edge: str  # host:port of Envoy's published listener
    openai: str  # base URL of the OpenAI-compatible gateway's published port

    @staticmethod
    def container(service: str) -> str:
        return f"{PROJECT}_{service}_1"


def _compose(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    command = [*compose_command(), "-p", PROJECT]
    for path in FILES:
        command += ["-f", path]
    return subprocess.run(
        [*command, "--profile", "cpu", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
        env=env,
    )


@pytest.fixture(scope="module")
def stack() -> Iterator[ComposeStack]:
    port, openai_port = free_port(), free_port()
    env = {
        **os.environ,
        "MMSERVE_IMAGE_PREFIX": PREFIX,
        "MMSERVE_TAG": TAG,
        "MMSERVE_EDGE_PORT": str(port),
        "MMSERVE_OPENAI_PORT": str(openai_port),
    }
    _compose("down", "-v", "-t", "5", env=env, timeout=300)
    up = _compose("up", "-d", env=env, timeout=600)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        services = [f"{name}-cpu" for name in CAPABILITY_IMAGES]
        wait_healthy([ComposeStack.container(s) for s in services], HEALTHY_WITHIN_S)
        wait_healthy([ComposeStack.container("edge"), ComposeStack.container("openai")], 180)
        yield ComposeStack(f"127.0.0.1:{port}", f"http://127.0.0.1:{openai_port}/v1")
    finally:
        _compose("down", "-v", "-t", "60", env=env, timeout=600)


def test_images_run_as_the_non_root_uid(stack: ComposeStack) -> None:
    for name in (*CAPABILITY_IMAGES, "edge", "openai"):
        container = stack.container(f"{name}-cpu" if name in CAPABILITY_IMAGES else name)
        proc = podman("exec", container, "id", "-u")
        assert proc.stdout.strip() == "10001", container


def test_edge_lists_every_service(stack: ComposeStack) -> None:
    listed = grpcurl(["-plaintext", stack.edge, "list"])
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) >= {
        *(spec.service for spec in CAPABILITIES.values()),
        "grpc.health.v1.Health",
    }


def test_health_of_every_service_through_the_edge(stack: ComposeStack) -> None:
    for name in ("", "mmserve.edge", *(spec.service for spec in CAPABILITIES.values())):
        proc = grpcurl(
            [
                "-plaintext",
                "-d",
                json.dumps({"service": name}),
                stack.edge,
                "grpc.health.v1.Health/Check",
            ]
        )
        assert proc.returncode == 0, (name, proc.stderr)
        assert json.loads(proc.stdout)["status"] == "SERVING", name


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_one_real_call_per_capability(stack: ComposeStack, name: str) -> None:
    sample = SAMPLES[name]
    method = f"{sample.spec.service}/{sample.unary}"
    proc = grpcurl(
        ["-plaintext", "-d", json.dumps(sample.request), stack.edge, method], timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    assert sample.result_field.lower() in {k.replace("_", "").lower() for k in reply}, reply


def _http(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as reply:
        return json.loads(reply.read())  # type: ignore[no-any-return]


def test_openai_gateway_lists_models_and_embeds(stack: ComposeStack) -> None:
    """The OpenAI-compatible image, wired to the capabilities by their Compose names."""
    models = _http(f"{stack.openai}/models")
    served = {m["capability"]: m["id"] for m in models["data"]}
    assert set(served) == set(CAPABILITY_IMAGES), models
    reply = _http(f"{stack.openai}/embeddings", {"model": served["vision"], "input": "a red fox"})
    assert reply["data"][0]["embedding"], reply


def _embed(channel: grpc.Channel, images: int) -> grpc.StatusCode:
    """One vision EmbedImages call of `images` images through the edge."""
    stub = vision_pb2_grpc.VisionServiceStub(channel)
    sample = SAMPLES["vision"].request
    request = json_format.ParseDict(
        {**sample, "images": sample["images"] * images}, vision_pb2.EmbedImagesRequest()
    )
    try:
        stub.EmbedImages(request, timeout=240)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _server_events(container: str) -> list[dict[str, Any]]:
    """The container's JSON log lines, in order (other lines skipped)."""
    events = []
    # The server logs to stderr; podman logs replays it there.
    proc = subprocess.run(
        ["podman", "logs", container],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events


def _drains(container: str) -> int:
    return sum(e.get("event") == "draining" for e in _server_events(container))


def test_stop_under_load_drains_and_exits_zero(stack: ComposeStack) -> None:
    """podman stop sends the image's STOPSIGNAL (SIGTERM) while clients keep calling: the calls
    the server had accepted all finish OK (some during the drain), new ones are refused with
    UNAVAILABLE, nothing else is seen, and the process exits 0 within its grace."""
    container = stack.container("vision-cpu")
    drains_before = _drains(container)
    done = threading.Event()
    codes: list[grpc.StatusCode] = []

    def keep_calling(channel: grpc.Channel) -> None:
        while not done.is_set():
            code = _embed(channel, 32)
            codes.append(code)
            if code != grpc.StatusCode.OK:
                time.sleep(0.2)

    with grpc.insecure_channel(stack.edge) as channel:
        assert _embed(channel, 1) == grpc.StatusCode.OK
        workers = [threading.Thread(target=keep_calling, args=(channel,)) for _ in range(8)]
        for worker in workers:
            worker.start()
        time.sleep(3)  # steady load: calls queued and running at every moment
        stopper = threading.Thread(
            target=podman, args=("stop", "-t", "60", container), kwargs={"timeout": 120}
        )
        stopper.start()
        deadline = time.monotonic() + 60
        while _drains(container) == drains_before and time.monotonic() < deadline:
            time.sleep(0.2)
        refused = [_embed(channel, 1) for _ in range(3)]
        stopper.join(130)
        done.set()
        for worker in workers:
            worker.join(60)

    events = _server_events(container)
    last_drain = max(i for i, e in enumerate(events) if e.get("event") == "draining")
    after = [e for e in events[last_drain:] if e.get("logger") == "mmserve.access"]
    assert any(e["code"] == "OK" for e in after), "no accepted call finished during the drain"
    assert {e["code"] for e in after} <= {"OK", "UNAVAILABLE"}, after
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, set(codes)
    assert grpc.StatusCode.OK in codes
    assert refused == [grpc.StatusCode.UNAVAILABLE] * 3, (refused, logs(container))
    assert state(container) == "exited"
    assert exit_code(container) == 0, logs(container)
    # Back to serving for whatever runs after this test.
    podman("start", container)
    wait_healthy([container], HEALTHY_WITHIN_S)


def test_restarted_container_serves_again_through_the_edge(stack: ComposeStack) -> None:
    """Envoy finds the restarted container (a new address under the same DNS name) by itself:
    its DNS refresh and active health checks admit it within seconds of SERVING."""
    service = CAPABILITIES["vision"].service
    with grpc.insecure_channel(stack.edge) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline:
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            if status.status == health_pb2.HealthCheckResponse.SERVING:
                break
            time.sleep(1)
        assert status is not None
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        assert _embed(channel, 1) == grpc.StatusCode.OK
