"""Replica faults behind the real Envoy edge, under a steady load of unary calls and streams:

- a rolling restart (SIGTERM one replica, let it drain and exit, start it again, wait until
  Envoy routes to it, then the next) loses no request;
- kill -9 of a replica: its in-flight calls fail fast, Envoy ejects it at once, and every call
  after that is served by the rest.

tests/e2e/test_replicas.py covers one graceful stop with unary load; this adds streams, whole
rolling restarts and hard kills. MMSERVE_SOAK=1 (make soak) rolls more rounds, and each real
capability (tiny models, SmolLM2 for omni) as well.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from bench.loadgen import LoadSpec, default_request
from bench.loadgen import method_for as loadgen_method
from gateway.catalog import capability
from gateway.edge import SERVING
from gateway.render import EdgeConfig
from gateway.stack import ServiceGroup, Stack, StackConfig
from mmserve.t2i.v1 import t2i_pb2_grpc
from tests.e2e.support import (
    REPLICA_HEADER,
    host_status,
    in_rotation,
    replica_of,
    replica_value,
)
from tests.reliability.faults.support import early_headers_unary, t2i_request

SOAK = os.environ.get("MMSERVE_SOAK") == "1"
ROUNDS = 3 if SOAK else 1  # full rolling restarts per test
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
FAULTY = "tests.reliability.faults.faulty_service"


# Extra flags of the real services in the soak: omni without speech models (faster starts).
REAL_ARGS = {"omni": ("--asr-model", "none", "--tts-model", "none")}


def stack_config(run_dir: Path, name: str, real: bool = False) -> StackConfig:
    if not real:  # the runtime's mechanics without a model: 0.1 s per step
        group = ServiceGroup(
            capability("t2i"),
            replicas=2,
            module=FAULTY,
            args=("--step-seconds", "0.1", "--drain-grace-seconds", "20"),
        )
    else:
        args = ("--drain-grace-seconds", "60", *REAL_ARGS.get(name, ()))
        group = ServiceGroup(capability(name), replicas=2, args=args)
    edge = EdgeConfig(upstreams=(), edge_endpoints=(), descriptor_path="", outlier_ejection_s=2.0)
    return StackConfig(
        groups=[group],
        port=0,
        admin_port=0,
        run_dir=run_dir,
        ready_timeout=240,
        stop_grace=20,
        env=ENV,
        edge=edge,
    )


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(stack_config(tmp_path_factory.mktemp("faulty-pair"), "t2i"))
    stack.start()
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


# --- Envoy's view --------------------------------------------------------------------------


def addresses(stack: Stack, name: str) -> list[str]:
    return [str(e) for e in stack.group(name).endpoints]


async def until(predicate: Any, timeout: float, what: str) -> float:
    """Waits (bounded) for `predicate()`; returns the seconds it took."""
    started = time.monotonic()
    while not await asyncio.to_thread(predicate):
        if time.monotonic() - started > timeout:
            raise TimeoutError(what)
        await asyncio.sleep(0.1)
    return time.monotonic() - started


# --- load ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    started: float
    ended: float
    kind: str
    code: grpc.StatusCode
    replica: str
    details: str = ""


def small_request(name: str) -> Any:
    """A quick request of each capability (bench.loadgen's defaults, fewer tokens)."""
    return default_request(LoadSpec("-", name, steps=2, max_new_tokens=4))


@dataclass
class Load:
    """Workers sending unary calls and streams (vision: unary only) through Envoy until
    stopped."""

    channel: grpc.aio.Channel
    name: str
    workers: int
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = asyncio.Event()
        kinds = ["unary"] if self.name == "vision" else ["unary", "stream"]
        self._tasks = [
            asyncio.create_task(self._worker(kinds[i % len(kinds)])) for i in range(self.workers)
        ]

    async def _call(self, kind: str) -> tuple[Any, bool]:
        stream = kind == "stream"
        method = loadgen_method(LoadSpec("-", self.name, stream=stream), self.channel)
        return method(small_request(self.name), timeout=120), stream

    async def _worker(self, kind: str) -> None:
        """Records every call; a call refused before any header has no replica to credit."""
        while not self._stop.is_set():
            started = time.monotonic()
            call, stream = await self._call(kind)
            details = ""
            try:
                if stream:
                    while await call.read() is not grpc.aio.EOF:
                        pass
                else:
                    await call
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code, details = error.code(), error.details() or ""
            headers = dict(await call.initial_metadata() or ())
            replica = replica_of(headers.get(REPLICA_HEADER))
            self.outcomes.append(Outcome(started, time.monotonic(), kind, code, replica, details))

    def failures(self, since: float = 0.0) -> list[Outcome]:
        return [o for o in self.outcomes if o.code != grpc.StatusCode.OK and o.started >= since]

    def served_by(self, since: float) -> set[str]:
        return {o.replica for o in self.outcomes if o.started >= since and o.replica}

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), timeout=60)


async def restart_one(stack: Stack, name: str, index: int, load: Load) -> None:
    """What a rolling update does to one replica: SIGTERM, drain and exit 0, start the new one
    on the same address, and go on only once the edge routes calls to it again.

    Envoy's admin view is not enough for the last step: a replica that outlier detection
    ejected while it restarted shows healthy in /clusters as soon as a health check passes,
    yet the load balancer skips it until the ejection time is over (measured: 2 s of calls
    all going to the other, draining replica, then failing). So: wait for served calls."""
    child = stack.group(name).children[index]
    address = addresses(stack, name)[index]
    child.signal(signal.SIGTERM)
    assert await asyncio.to_thread(child.wait, 60) == 0, child.tail()
    # The replica is gone; Envoy's health check sees it (a fast exit may beat the check).
    await until(lambda: not in_rotation(host_status(stack.admin_url, name, address)), 10, "out")
    restarted = time.monotonic()
    stack.start_replica(name, index)
    await until(lambda: address in load.served_by(restarted), 240, f"{address} serves again")


async def rolling_restart_loses_nothing(stack: Stack, name: str, workers: int) -> None:
    async with grpc.aio.insecure_channel(stack.address) as channel:
        load = Load(channel, name, workers)
        both = set(addresses(stack, name))
        try:
            await until(lambda: both <= load.served_by(0), 120, "both replicas serve")
            for _ in range(ROUNDS):
                for index in range(2):
                    await restart_one(stack, name, index, load)
            after = time.monotonic()
            await until(lambda: both <= load.served_by(after), 120, "both serve again")
        finally:
            await load.stop()
    assert not load.failures(), load.failures()[:10]
    assert len(load.outcomes) > 10 * ROUNDS
    if name != "vision":
        assert {o.kind for o in load.outcomes} == {"unary", "stream"}


async def test_rolling_restart_under_load_loses_no_request(pair: Stack) -> None:
    await rolling_restart_loses_nothing(pair, "t2i", workers=8)


@pytest.mark.skipif(not SOAK, reason="real model replicas: MMSERVE_SOAK=1 (make soak)")
@pytest.mark.parametrize("name", ["t2i", "vl", "vision", "omni"])
async def test_rolling_restart_of_each_real_capability_loses_no_request(
    tmp_path_factory: pytest.TempPathFactory, name: str
) -> None:
    stack = Stack(stack_config(tmp_path_factory.mktemp(f"{name}-pair"), name, real=True))
    await asyncio.to_thread(stack.start)
    try:
        await asyncio.to_thread(stack.wait_ready)
        await rolling_restart_loses_nothing(stack, name, workers=4)
    finally:
        await asyncio.to_thread(stack.stop)


async def test_kill_9_fails_in_flight_fast_then_the_rest_serve(pair: Stack) -> None:
    first, second = addresses(pair, "t2i")
    await until(lambda: in_rotation(host_status(pair.admin_url, "t2i", first)), 60, "pair whole")
    await until(lambda: in_rotation(host_status(pair.admin_url, "t2i", second)), 60, "pair whole")
    pin = ((REPLICA_HEADER, replica_value(first)),)
    async with (
        grpc.aio.insecure_channel(pair.address) as edge,
        grpc.aio.insecure_channel(first) as direct,
    ):
        load = Load(edge, "t2i", workers=6)
        try:
            await asyncio.sleep(1.0)
            # Calls in flight on the replica about to die: through Envoy (stream and unary,
            # both past their response headers, so Envoy may not retry them) and direct.
            t2i = t2i_pb2_grpc.ImageGenerationServiceStub(edge)
            stream = t2i.StreamTextToImage(t2i_request(steps=100), metadata=pin, timeout=60)
            assert (await stream.read()).WhichOneof("event") == "accepted"
            unary = early_headers_unary(edge)(t2i_request(steps=100), metadata=pin, timeout=60)
            # Accepted (job id header relayed). Envoy echoes no replica header to a call that
            # came pinned to that replica, and the pin holds while the replica is healthy.
            assert "mmserve-job-id" in dict(await unary.initial_metadata())
            direct_stub = t2i_pb2_grpc.ImageGenerationServiceStub(direct)
            direct_call = direct_stub.StreamTextToImage(t2i_request(steps=100), timeout=60)
            assert (await direct_call.read()).WhichOneof("event") == "accepted"

            killed = time.monotonic()
            pair.group("t2i").children[0].signal(signal.SIGKILL)
            codes = await asyncio.wait_for(
                asyncio.gather(stream.code(), unary.code(), direct_call.code()), 10
            )
            failed_within = time.monotonic() - killed
            ejected_within = await until(
                lambda: not in_rotation(host_status(pair.admin_url, "t2i", first)), 10, "ejected"
            )
            settled = time.monotonic() + 0.5
            await asyncio.sleep(3.0)
        finally:
            await load.stop()
    assert failed_within < 2.0, "in-flight calls fail fast, not at their deadline"
    # Direct callers see the connection drop as UNAVAILABLE (retry elsewhere). Through Envoy, a
    # call whose response headers were already relayed can only be reset: grpc reports that as
    # INTERNAL "RST_STREAM" (Envoy has no way to send a gRPC status after the headers).
    assert codes[2] == grpc.StatusCode.UNAVAILABLE, codes
    for code, call in zip(codes[:2], (stream, unary), strict=True):
        assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL), code
        if code == grpc.StatusCode.INTERNAL:
            assert "RST_STREAM" in (await call.details() or "")
    assert ejected_within < 3.0
    # Only calls already in flight at the kill failed; everything after went to the survivor.
    lost = [o for o in load.failures() if o.started > killed]
    assert not lost, lost
    assert load.served_by(settled) == {second}
    assert await asyncio.to_thread(pair.health, "mmserve.t2i.v1.ImageGenerationService") == SERVING
    # Leave the pair whole for the other tests.
    pair.start_replica("t2i", 0)
    await until(lambda: in_rotation(host_status(pair.admin_url, "t2i", first)), 60, "readmitted")
