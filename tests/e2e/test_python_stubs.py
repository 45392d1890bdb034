"""Generated Python stubs through Envoy: unary and streaming calls, job and request ids, rich
errors, deadlines, health per service name, and GetJob/CancelJob pinned to the job's replica."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
import uuid
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.stack import Stack
from mmserve.common.v1 import job_pb2
from mmserve.t2i.v1 import t2i_pb2, t2i_pb2_grpc
from tests.e2e.support import REPLICA_HEADER, T2I, read_into, replica_of, t2i_request


@pytest.fixture
async def channel(sleepy_stack: Stack):
    async with grpc.aio.insecure_channel(sleepy_stack.address) as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> t2i_pb2_grpc.ImageGenerationServiceStub:
    return t2i_pb2_grpc.ImageGenerationServiceStub(channel)


def bad_request(exc: grpc.aio.AioRpcError) -> error_details_pb2.BadRequest:
    raw = dict(exc.trailing_metadata() or ())["grpc-status-details-bin"]
    for detail in status_pb2.Status.FromString(raw).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            found = error_details_pb2.BadRequest()
            detail.Unpack(found)
            return found
    raise AssertionError("no BadRequest detail")


async def test_unary_call_carries_job_request_and_replica_ids(
    stub: t2i_pb2_grpc.ImageGenerationServiceStub, sleepy_stack: Stack
) -> None:
    request_id = f"edge-test-{uuid.uuid4().hex[:8]}"
    call = stub.TextToImage(t2i_request(), metadata=(("x-request-id", request_id),), timeout=30)
    reply = await call
    assert reply.result.images[0].data.startswith(b"\x89PNG")
    headers = dict(await call.initial_metadata())
    assert headers["mmserve-job-id"]
    # The replica that served it, as Envoy's stateful session encodes it.
    assert replica_of(headers[REPLICA_HEADER]) == str(sleepy_stack.group("t2i").endpoints[0])
    # The client's request id crossed Envoy and came back from the service.
    assert dict(await call.trailing_metadata())["x-request-id"] == request_id
    job = await stub.GetJob(job_pb2.GetJobRequest(job_id=headers["mmserve-job-id"]), timeout=10)
    assert job.job.state == job_pb2.JOB_STATE_SUCCEEDED


async def test_stream_events_arrive_as_they_happen(
    stub: t2i_pb2_grpc.ImageGenerationServiceStub,
) -> None:
    started = time.monotonic()
    kinds: list[tuple[str, float]] = []
    async for event in stub.StreamTextToImage(t2i_request(steps=5), timeout=30):
        kinds.append((event.WhichOneof("event"), time.monotonic() - started))
    names = [k for k, _ in kinds]
    assert names[0] == "accepted"
    assert names[-1] == "result"
    steps = [t for k, t in kinds if k == "step"]
    assert len(steps) == 5
    # 0.2 s per step on the server: Envoy forwards each event at once, not in one batch.
    # (Median, not minimum: a loaded machine may delay one event and bunch it with the next.)
    gaps = [b - a for a, b in itertools.pairwise(steps)]
    assert statistics.median(gaps) > 0.1, gaps
    assert steps[-1] - steps[0] > 0.5, steps


async def test_errors_keep_their_details_through_envoy(
    stub: t2i_pb2_grpc.ImageGenerationServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.TextToImage(t2i_request(width=512), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = bad_request(err.value).field_violations
    assert [v.field for v in violations] == ["params.width"]
    # Streams fail the same way.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await read_into(stub.StreamTextToImage(t2i_request(prompt=""), timeout=10), [])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request(err.value).field_violations[0].field == "params.prompt"


async def test_client_deadline_is_honoured_and_cancels_the_job(
    stub: t2i_pb2_grpc.ImageGenerationServiceStub,
) -> None:
    started = time.monotonic()
    events: list[Any] = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await read_into(stub.StreamTextToImage(t2i_request(steps=50), timeout=1.0), events)
    job_id = events[0].job_id
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 5
    # The job stopped at once: the client's cancel and the service's own copy of the deadline
    # race to it, so either reason is fine (test_protocols checks the deadline alone).
    deadline = time.monotonic() + 10
    job = job_pb2.Job()
    while time.monotonic() < deadline:
        job = (await stub.GetJob(job_pb2.GetJobRequest(job_id=job_id), timeout=5)).job
        if job.HasField("end_time"):
            break
        await asyncio.sleep(0.1)
    assert job.state in (job_pb2.JOB_STATE_CANCELLED, job_pb2.JOB_STATE_FAILED), job
    stopped_by = {grpc.StatusCode.DEADLINE_EXCEEDED.value[0], grpc.StatusCode.CANCELLED.value[0]}
    assert job.error_code in stopped_by, job
    assert job.progress.step < 50


async def test_health_per_service_name_through_the_edge(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in (T2I, ""):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    # A capability this edge does not route is unknown, not silently SERVING.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await health.Check(
            health_pb2.HealthCheckRequest(service="mmserve.vision.v1.VisionService"), timeout=5
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # Watch streams through Envoy too (no route timeout on the health route).
    watch = health.Watch(health_pb2.HealthCheckRequest(service=T2I), timeout=5)
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


async def test_model_info_through_envoy(stub: t2i_pb2_grpc.ImageGenerationServiceStub) -> None:
    reply = await stub.GetModelInfo(t2i_pb2.GetModelInfoRequest(), timeout=10)
    assert reply.model_info.family == "sleepy"
