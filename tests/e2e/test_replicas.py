"""Two replicas of one service behind Envoy: a replica stopped under load costs no request, is
taken out of rotation and comes back; a draining replica gets no new work; GetJob/CancelJob
reach the replica that holds the job; the edge's health follows the replicas."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from gateway.edge import NOT_SERVING, SERVING
from gateway.stack import Stack
from mmserve.common.v1 import job_pb2
from mmserve.t2i.v1 import t2i_pb2_grpc
from tests.e2e.conftest import sleepy_config
from tests.e2e.support import (
    REPLICA_HEADER,
    host_status,
    in_rotation,
    read_into,
    replica_of,
    replica_value,
    t2i_request,
)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(sleepy_config(tmp_path_factory.mktemp("pair-stack"), replicas=2))
    stack.start()
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


def addresses(stack: Stack) -> list[str]:
    return [str(e) for e in stack.group("t2i").endpoints]


def host_health(stack: Stack, address: str) -> dict[str, Any]:
    return host_status(stack.admin_url, "t2i", address)


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(what)


async def ensure_both_serving(stack: Stack) -> None:
    """Tests leave the pair whole; this also checks it is."""
    for address in addresses(stack):
        await wait_until(lambda a=address: in_rotation(host_health(stack, a)), 30, address)


@dataclass
class Outcome:
    at: float
    replica: str
    code: grpc.StatusCode
    details: str = ""


class Load:
    """Concurrent unary calls through Envoy until stopped; records who answered what."""

    def __init__(self, stub: t2i_pb2_grpc.ImageGenerationServiceStub, workers: int) -> None:
        self.stub = stub
        self.outcomes: list[Outcome] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(workers)]

    async def _worker(self) -> None:
        while not self._stop.is_set():
            call = self.stub.TextToImage(t2i_request(), timeout=30)
            details = ""
            try:
                await call
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details() or ""
            headers = dict(await call.initial_metadata() or ())
            replica = replica_of(headers.get(REPLICA_HEADER))
            self.outcomes.append(Outcome(time.monotonic(), replica, code, details))

    def since(self, moment: float) -> list[Outcome]:
        return [o for o in self.outcomes if o.at >= moment]

    async def run_for(self, seconds: float) -> list[Outcome]:
        start = time.monotonic()
        await asyncio.sleep(seconds)
        return self.since(start)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), timeout=60)


async def test_stopping_a_replica_under_load_fails_no_request(pair: Stack) -> None:
    await ensure_both_serving(pair)
    first, second = addresses(pair)
    async with grpc.aio.insecure_channel(pair.address) as channel:
        load = Load(t2i_pb2_grpc.ImageGenerationServiceStub(channel), workers=4)
        try:
            # Within a bound, not a fixed window: on a busy machine a replica can miss one
            # health check and sit out a second or two before the balancer sends it work.
            warm_from = time.monotonic()

            def both_served() -> bool:
                return {o.replica for o in load.since(warm_from)} == {first, second}

            await wait_until(both_served, 10, "both replicas take traffic")

            # Stop the first replica gracefully while calls keep coming.
            child = pair.group("t2i").children[0]
            child.signal()
            stopped_at = time.monotonic()
            # Off the loop: the load keeps running (and recording) while the replica drains.
            assert await asyncio.to_thread(child.wait, 30) == 0, child.tail()
            await wait_until(
                lambda: not in_rotation(host_health(pair, first)), 10, "stopped replica ejected"
            )
            alone = await load.run_for(1.5)
            assert alone, "traffic continues"
            assert {o.replica for o in alone} == {second}
            # Health through the edge: the capability is still served by the other replica.
            assert pair.health("mmserve.t2i.v1.ImageGenerationService") == SERVING

            # Bring it back on the same port: Envoy's health check readmits it.
            pair.start_replica("t2i", 0)
            await wait_until(lambda: in_rotation(host_health(pair, first)), 60, "readmitted")
            back_from = time.monotonic()
            await wait_until(
                lambda: first in {o.replica for o in load.since(back_from)},
                10,
                "traffic returns to the restarted replica",
            )
        finally:
            await load.stop()
    failures = [o for o in load.outcomes if o.code != grpc.StatusCode.OK]
    assert not failures, failures
    assert len(load.since(stopped_at)) > 10


async def test_draining_replica_gets_no_new_work(pair: Stack) -> None:
    await ensure_both_serving(pair)
    first, second = addresses(pair)
    child = pair.group("t2i").children[0]
    async with grpc.aio.insecure_channel(pair.address) as channel:
        stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
        # A 3 s job pinned to the first replica; it must still finish during the drain.
        pinned = ((REPLICA_HEADER, replica_value(first)),)
        stream = stub.StreamTextToImage(t2i_request(steps=15), metadata=pinned, timeout=60)
        while (await stream.read()).WhichOneof("event") != "step":
            pass
        child.signal()
        sent_after_sigterm: list[str] = []
        for _ in range(8):
            call = stub.TextToImage(t2i_request(), timeout=30)
            await call
            headers = dict(await call.initial_metadata())
            sent_after_sigterm.append(replica_of(headers[REPLICA_HEADER]))
        last = None
        while (event := await stream.read()) is not grpc.aio.EOF:
            last = event
        assert last is not None
        assert last.WhichOneof("event") == "result"
        assert await stream.code() == grpc.StatusCode.OK
    assert await asyncio.to_thread(child.wait, 30) == 0, child.tail()
    assert set(sent_after_sigterm) == {second}
    # The replica's own log (restarts append to it, so the last drain is this one): after it
    # started draining it accepted no job but the pinned one.
    lines = [json.loads(line) for line in child.log().splitlines() if line.startswith("{")]
    draining = max(i for i, e in enumerate(lines) if e.get("event") == "draining")
    accepted_after = [
        e for e in lines[draining:] if e.get("logger") == "mmserve.access" and e.get("job_id")
    ]
    assert [e["method"] for e in accepted_after] == [
        "/mmserve.t2i.v1.ImageGenerationService/StreamTextToImage"
    ], accepted_after
    pair.start_replica("t2i", 0)
    await ensure_both_serving(pair)


async def test_job_calls_reach_the_replica_that_holds_the_job(pair: Stack) -> None:
    await ensure_both_serving(pair)
    async with grpc.aio.insecure_channel(pair.address) as channel:
        stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
        stream = stub.StreamTextToImage(t2i_request(steps=100), timeout=60)
        holder = replica_of(dict(await stream.initial_metadata())[REPLICA_HEADER])
        job_id = (await stream.read()).job_id
        other = next(a for a in addresses(pair) if a != holder)
        # The job lives on one replica only: elsewhere it is unknown.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetJob(
                job_pb2.GetJobRequest(job_id=job_id),
                metadata=((REPLICA_HEADER, replica_value(other)),),
                timeout=10,
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # Sent back, the header the stream carried reaches the holder every time.
        pin = ((REPLICA_HEADER, replica_value(holder)),)
        for _ in range(3):
            job = await stub.GetJob(job_pb2.GetJobRequest(job_id=job_id), metadata=pin, timeout=10)
            assert job.job.state in (job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING)
        cancelled = await stub.CancelJob(
            job_pb2.CancelJobRequest(job_id=job_id), metadata=pin, timeout=10
        )
        assert cancelled.job.job_id == job_id
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await read_into(stream, [])
        assert err.value.code() == grpc.StatusCode.CANCELLED


async def test_edge_health_follows_the_replicas(pair: Stack) -> None:
    await ensure_both_serving(pair)
    children = pair.group("t2i").children
    for child in children:
        child.signal()
    for child in children:
        assert await asyncio.to_thread(child.wait, 30) == 0, child.tail()
    service = "mmserve.t2i.v1.ImageGenerationService"
    await wait_until(lambda: pair.health(service) == NOT_SERVING, 10, "edge reports NOT_SERVING")
    assert pair.health("") == NOT_SERVING
    async with grpc.aio.insecure_channel(pair.address) as channel:
        stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.TextToImage(t2i_request(), timeout=30)
        # No replica left: UNAVAILABLE from Envoy at once, never a wait on a dead one.
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 5
    for index in range(len(children)):
        pair.start_replica("t2i", index)
    await wait_until(lambda: pair.health(service) == SERVING, 60, "edge reports SERVING again")
    await ensure_both_serving(pair)
