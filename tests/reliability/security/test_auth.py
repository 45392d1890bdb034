"""With API keys configured, every RPC of every service (enumerated from the service
descriptors) refuses a call without a key, with a wrong key or with a malformed header:
UNAUTHENTICATED, without echoing what was sent. Health and reflection stay open. Through the
Envoy edge the same holds for gRPC and HTTP/JSON callers.

The enumeration runs each capability's real servicers and interceptor in process with a
stand-in engine that is still "loading" (no model needed: authentication comes first)."""

from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import services.omni.capability
import services.t2i.capability
import services.vision.capability
import services.vl.capability
from gateway.stack import Stack
from mmserve.omni.v1 import omni_pb2  # noqa: F401  (registers the descriptors)
from mmserve.t2i.v1 import t2i_pb2, t2i_pb2_grpc
from mmserve.vision.v1 import vision_pb2  # noqa: F401
from mmserve.vl.v1 import vl_pb2  # noqa: F401
from services.runtime.config import ServiceSettings, load_settings
from services.runtime.engine import Engine
from services.runtime.server import Capability, ServiceServer
from tests.reliability.security.conftest import Keys
from tests.support.servers import LOOPBACK

module_loop = pytest.mark.asyncio(loop_scope="module")

CAPABILITIES: dict[str, Capability] = {
    "t2i": services.t2i.capability.CAPABILITY,
    "vl": services.vl.capability.CAPABILITY,
    "vision": services.vision.capability.CAPABILITY,
    "omni": services.omni.capability.CAPABILITY,
}


class StillLoading:
    """Makes a capability's real engine load until the test ends: the service is up with its
    real servicers, NOT_SERVING, and answers UNAVAILABLE to authenticated work (which shows
    the key was accepted), and no model is loaded."""

    def __init__(self, cap: Capability) -> None:
        self.cap = cap
        self.release = threading.Event()

    def create_engine(self, settings: ServiceSettings) -> Engine:
        engine = self.cap.engine(settings)
        engine.load = self.load  # type: ignore[method-assign]
        return engine

    def load(self) -> None:
        self.release.wait(120)
        raise RuntimeError("test finished")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def servers(keys: Keys) -> AsyncIterator[dict[str, ServiceServer]]:
    started: dict[str, tuple[ServiceServer, StillLoading]] = {}
    try:
        for name, cap in CAPABILITIES.items():
            loading = StillLoading(cap)
            settings = load_settings(cap.settings_cls, [*LOOPBACK, "--api-keys", keys.flag])
            server = ServiceServer(replace(cap, create_engine=loading.create_engine), settings)
            await server.start()
            started[name] = (server, loading)
        yield {name: server for name, (server, _) in started.items()}
    finally:
        for server, loading in started.values():
            loading.release.set()
            await server.drain_and_stop()


def rpcs() -> list[tuple[str, str, Any]]:
    """(capability, service name, method descriptor) of every RPC of every capability."""
    pool = descriptor_pool.Default()
    found = []
    for name, cap in CAPABILITIES.items():
        for service in cap.service_names:
            for method in pool.FindServiceByName(service).methods:
                found.append((name, service, method))
    return found


RPCS = rpcs()


def bad_credentials(keys: Keys) -> dict[str, tuple[tuple[str, str], ...]]:
    return {
        "no key": (),
        "wrong key": Keys.bearer(keys.wrong),
        "key of another deployment's format": Keys.bearer(keys.alice.upper()),
        "valid key plus a suffix": Keys.bearer(keys.alice + "x"),
        "valid key, wrong scheme": (("authorization", f"Basic {keys.alice}"),),
        "valid key, other header": (("x-api-key", keys.alice),),
        "empty bearer": (("authorization", "Bearer "),),
    }


async def call(channel: grpc.aio.Channel, service: str, method: Any, metadata: Any) -> Any:
    """Calls `method` with an empty request; returns the call's final status."""
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    path = f"/{service}/{method.name}"
    kind = channel.unary_stream if method.server_streaming else channel.unary_unary
    multicallable = kind(
        path,
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )
    rpc = multicallable(request_cls(), metadata=metadata, timeout=10)
    return rpc


def test_every_capability_has_its_rpcs_enumerated() -> None:
    counts: dict[str, int] = {}
    for name, _, _ in RPCS:
        counts[name] = counts.get(name, 0) + 1
    # Every job RPC, GetJob, CancelJob, GetModelInfo, collections (vision), sessions, voices,
    # recordings and plain speech (omni) are in the list: all of them need a key.
    assert counts == {"t2i": 11, "vl": 5, "vision": 16, "omni": 20}, counts


@module_loop
@pytest.mark.parametrize(
    ("name", "service", "method"), RPCS, ids=[f"{s}/{m.name}" for _, s, m in RPCS]
)
async def test_rpc_refuses_missing_wrong_and_malformed_keys(
    servers: dict[str, ServiceServer], keys: Keys, name: str, service: str, method: Any
) -> None:
    target = f"127.0.0.1:{servers[name].port}"
    async with grpc.aio.insecure_channel(target) as channel:
        for label, metadata in bad_credentials(keys).items():
            rpc = await call(channel, service, method, metadata)
            code = await rpc.code()
            assert code == grpc.StatusCode.UNAUTHENTICATED, (label, code)
            details = await rpc.details() or ""
            assert keys.alice not in details
            assert keys.wrong not in details
        # The right key gets past authentication (the service then says it is loading, or
        # what is wrong with the empty request).
        rpc = await call(channel, service, method, Keys.bearer(keys.bob))
        assert await rpc.code() != grpc.StatusCode.UNAUTHENTICATED


@module_loop
async def test_health_and_reflection_stay_open(
    servers: dict[str, ServiceServer], keys: Keys
) -> None:
    for name, server in servers.items():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for metadata in ((), Keys.bearer(keys.wrong)):  # a probe never needs a key
                for service in ("", *CAPABILITIES[name].service_names):
                    reply = await health.Check(
                        health_pb2.HealthCheckRequest(service=service),
                        metadata=metadata,
                        timeout=5,
                    )
                    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            stream = reflection.ServerReflectionInfo(timeout=5)
            await stream.write(reflection_pb2.ServerReflectionRequest(list_services=""))
            listed = await stream.read()
            await stream.done_writing()
            names = {s.name for s in listed.list_services_response.service}
            assert set(CAPABILITIES[name].service_names) <= names


@module_loop
async def test_health_watch_stays_open(servers: dict[str, ServiceServer], keys: Keys) -> None:
    for server in servers.values():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()


@module_loop
async def test_auth_holds_through_the_edge_for_grpc_and_json(edge: Stack, keys: Keys) -> None:
    async with grpc.aio.insecure_channel(edge.address) as channel:
        stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
        request = t2i_pb2.TextToImageRequest(params=t2i_pb2.GenerationParams(prompt="a kite"))
        for metadata in ((), Keys.bearer(keys.wrong)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.TextToImage(request, metadata=metadata, timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            stream = stub.StreamTextToImage(request, metadata=metadata, timeout=10)
            assert await stream.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = await stub.TextToImage(request, metadata=Keys.bearer(keys.alice), timeout=30)
        assert reply.result.images
        health = health_pb2_grpc.HealthStub(channel)
        status = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    url = f"http://{edge.address}/mmserve.t2i.v1.ImageGenerationService/GetModelInfo"
    for headers in ({}, {"authorization": f"Bearer {keys.wrong}"}):
        assert await asyncio.to_thread(post_json, url, headers) == 401
    assert await asyncio.to_thread(post_json, url, {"authorization": f"Bearer {keys.bob}"}) == 200


def post_json(url: str, headers: dict[str, str]) -> int:
    """The HTTP status of an HTTP/JSON call through the edge's transcoder."""
    request = urllib.request.Request(
        url, data=b"{}", headers={"content-type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
