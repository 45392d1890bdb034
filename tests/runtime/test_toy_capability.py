"""A capability defined only from the runtime's public parts (tests/support/echo_service.py)
gets everything the runtime promises: queue events with ETA, cancel, deadlines, micro-batching
with splitting and OOM halving, usage, health and reflection, through a real server."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mmserve.common.v1 import job_pb2
from tests.support.echo_service import CAPABILITY, SERVICE, EchoEngine, echo_pb2
from tests.support.rpc import field_violations
from tests.support.servers import health_status, running_server

PREFIX = f"/{SERVICE}/"


class Echo:
    """Raw stubs from the method paths: the toy has no generated grpc module."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        def unary(
            name: str, request_cls: type, reply_cls: type
        ) -> grpc.aio.UnaryUnaryMultiCallable:
            return channel.unary_unary(
                PREFIX + name,
                request_serializer=request_cls.SerializeToString,
                response_deserializer=reply_cls.FromString,
            )

        self.echo = unary("Echo", echo_pb2.EchoRequest, echo_pb2.EchoResponse)
        self.shout = unary("Shout", echo_pb2.ShoutRequest, echo_pb2.ShoutResponse)
        self.cancel_job = unary("CancelJob", job_pb2.CancelJobRequest, job_pb2.CancelJobResponse)
        self.get_job = unary("GetJob", job_pb2.GetJobRequest, job_pb2.GetJobResponse)
        self.stream_echo = channel.unary_stream(
            PREFIX + "StreamEcho",
            request_serializer=echo_pb2.EchoRequest.SerializeToString,
            response_deserializer=echo_pb2.StreamEchoResponse.FromString,
        )


@pytest.fixture
async def server(request):
    argv = getattr(request, "param", [])
    async with running_server(CAPABILITY, argv) as srv:
        yield srv


@pytest.fixture
async def stub(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield Echo(channel)


async def test_health_and_reflection_come_from_the_runtime(server) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert await health_status(channel, SERVICE) == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask():
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        async for reply in reflection.ServerReflectionInfo(ask()):
            names = {service.name for service in reply.list_services_response.service}
            assert SERVICE in names
            break


async def test_unary_reports_usage_and_runs_on_the_device_thread(server, stub) -> None:
    reply = await stub.echo(echo_pb2.EchoRequest(text="hello", steps=3, step_seconds=0.05))
    assert reply.text == "hello"
    assert reply.usage.run_seconds >= 0.15
    assert reply.usage.batch_size == 1
    # Loading and every device run share one thread (one OpenMP team).
    assert len(server.runtime.engine_as(EchoEngine).threads) == 1


async def test_every_violation_is_named(stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.echo(echo_pb2.EchoRequest(text="", steps=-1, step_seconds=11))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["text", "steps", "step_seconds"]
    # and the service keeps serving
    assert (await stub.echo(echo_pb2.EchoRequest(text="ok"))).text == "ok"


async def test_stream_queue_eta_progress_output_and_done(stub) -> None:
    long = asyncio.ensure_future(
        stub.echo(echo_pb2.EchoRequest(text="blocker", steps=10, step_seconds=0.05))
    )
    await asyncio.sleep(0.1)  # the blocker is on the device
    events = [
        event
        async for event in stub.stream_echo(
            echo_pb2.EchoRequest(text="one two", steps=2, step_seconds=0.01)
        )
    ]
    await long
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[0] == "accepted"
    accepted = events[0].accepted
    assert accepted.job_id
    assert accepted.queue.position == 1
    assert accepted.queue.eta_seconds > 0
    assert all(event.job_id == accepted.job_id for event in events)
    assert kinds[-1] == "done"
    assert [e.word for e in events if e.WhichOneof("event") == "word"] == ["one", "two"]
    steps = [e.progress.step for e in events if e.WhichOneof("event") == "progress"]
    assert steps[-1] == 2
    assert events[-1].done.text == "one two"
    assert events[-1].done.usage.queue_seconds > 0.2


async def test_cancel_job_ends_the_stream_with_what_it_got(stub) -> None:
    stream = stub.stream_echo(echo_pb2.EchoRequest(text="a b c", steps=100, step_seconds=0.02))
    seen: list[echo_pb2.StreamEchoResponse] = []

    async def read_and_cancel_at_the_third_word() -> None:
        async for event in stream:
            seen.append(event)
            if sum(e.WhichOneof("event") == "word" for e in seen) == 3:
                await stub.cancel_job(job_pb2.CancelJobRequest(job_id=event.job_id))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_and_cancel_at_the_third_word()
    assert caught.value.code() is grpc.StatusCode.CANCELLED
    last = seen[-1]
    assert last.WhichOneof("event") == "cancelled"
    assert last.cancelled.text.startswith("a b c")
    job = (await stub.get_job(job_pb2.GetJobRequest(job_id=last.job_id))).job
    assert job.state == job_pb2.JOB_STATE_CANCELLED


async def test_client_cancel_frees_the_device_for_the_next_job(stub) -> None:
    call = stub.stream_echo(echo_pb2.EchoRequest(text="x", steps=500, step_seconds=0.02))
    async for event in call:
        if event.WhichOneof("event") == "progress":
            break
    call.cancel()
    started = time.monotonic()
    reply = await stub.echo(echo_pb2.EchoRequest(text="next", steps=1, step_seconds=0.01))
    assert reply.text == "next"
    assert reply.usage.queue_seconds < 1.0
    assert time.monotonic() - started < 2.0


async def test_deadline_covers_queue_and_run(stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.echo(
            echo_pb2.EchoRequest(text="slow", steps=100, step_seconds=0.05), timeout=0.3
        )
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert (await stub.echo(echo_pb2.EchoRequest(text="after"))).text == "after"


@pytest.mark.parametrize("server", [["--batch-max-wait-ms", "200"]], indirect=True)
async def test_callers_share_micro_batches(server, stub) -> None:
    replies = await asyncio.gather(
        *(stub.shout(echo_pb2.ShoutRequest(texts=[f"caller {i}"])) for i in range(4))
    )
    assert [list(r.texts) for r in replies] == [[f"CALLER {i}"] for i in range(4)]
    assert max(r.usage.batch_size for r in replies) >= 2
    assert sum(server.runtime.engine_as(EchoEngine).device_calls) == 4


@pytest.mark.parametrize(
    "server", [["--oom-above", "4", "--batch-max-wait-ms", "100"]], indirect=True
)
async def test_a_large_request_is_split_and_an_oom_halves_the_batch(server, stub) -> None:
    texts = [f"t{i}" for i in range(8)]  # four device-sized parts of two texts
    reply = await stub.shout(echo_pb2.ShoutRequest(texts=texts))
    assert list(reply.texts) == [text.upper() for text in texts]
    calls = server.runtime.engine_as(EchoEngine).device_calls
    assert calls[0] == 4  # all four parts together: 8 texts, out of memory
    assert max(calls[1:]) <= 2  # then halves that fit
    assert server.runtime.executor.effective_max_batch("shout") == 2
    assert reply.usage.batch_size == 2


@pytest.mark.parametrize("server", [["--oom-above", "1"]], indirect=True)
async def test_a_part_too_large_alone_runs_in_halves(server, stub) -> None:
    reply = await stub.shout(echo_pb2.ShoutRequest(texts=["a", "b", "c"]))
    assert list(reply.texts) == ["A", "B", "C"]
    # a part of two texts ran out of memory alone, then ran as two parts of one
    assert server.runtime.engine_as(EchoEngine).device_calls.count(1) >= 3
