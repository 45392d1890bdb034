"""The runtime through real gRPC servers: health, errors with details, jobs, streams,
cancellation, auth, rate limits, reflection, metrics and SIGTERM drain."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2

from mmserve.common.v1 import job_pb2, model_pb2
from mmserve.t2i.v1 import t2i_pb2, t2i_pb2_grpc
from tests.support.servers import (
    health_status,
    running_server,
    start_process,
    wait_for_health,
)
from tests.support.sleepy_service import CAPABILITY, SERVICE

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def request(prompt: str = "a cat", steps: int = 4, width: int = 8) -> t2i_pb2.TextToImageRequest:
    return t2i_pb2.TextToImageRequest(
        params=t2i_pb2.GenerationParams(prompt=prompt, num_inference_steps=steps, width=width)
    )


def details(exc: grpc.aio.AioRpcError) -> dict[str, object]:
    """Decodes the google.rpc details a client receives."""
    found: dict[str, object] = {}
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            rich = status_pb2.Status.FromString(value)
            for detail in rich.details:
                for cls in (
                    error_details_pb2.BadRequest,
                    error_details_pb2.RetryInfo,
                    error_details_pb2.RequestInfo,
                    error_details_pb2.ErrorInfo,
                ):
                    if detail.Is(cls.DESCRIPTOR):
                        message = cls()
                        detail.Unpack(message)
                        found[cls.__name__] = message
            found["code"] = rich.code
    return found


def trailing(exc: grpc.aio.AioRpcError, key: str) -> str | None:
    return dict(exc.trailing_metadata() or ()).get(key)


async def drain(stream: grpc.aio.UnaryStreamCall) -> None:
    """Reads a stream to its end; raises its error status."""
    while await stream.read() is not grpc.aio.EOF:
        pass


@pytest.fixture
async def server():
    async with running_server(CAPABILITY, ["--step-seconds", "0.05"]) as srv:
        yield srv


@pytest.fixture
async def stub(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield t2i_pb2_grpc.ImageGenerationServiceStub(channel)


async def test_unary_call_returns_result_job_id_and_request_id(stub) -> None:
    call = stub.TextToImage(request(), metadata=(("x-request-id", "req-123"),))
    reply = await call
    assert reply.result.images[0].data.startswith(b"\x89PNG")
    assert reply.result.usage.run_seconds > 0
    headers = dict(await call.initial_metadata())
    assert len(headers["mmserve-job-id"]) == 36
    assert dict(await call.trailing_metadata())["x-request-id"] == "req-123"
    job = await stub.GetJob(job_pb2.GetJobRequest(job_id=headers["mmserve-job-id"]))
    assert job.job.state == job_pb2.JOB_STATE_SUCCEEDED


async def test_stream_order_accepted_progress_result(stub) -> None:
    events = [e async for e in stub.StreamTextToImage(request(steps=3))]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "accepted"
    assert kinds[-1] == "result"
    assert [e.step.progress.step for e in events if e.HasField("step")] == [1, 2, 3]
    job_ids = {e.job_id for e in events}
    assert job_ids == {events[0].accepted.job_id}


async def test_invalid_argument_has_field_violations_and_service_keeps_serving(stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.TextToImage(request(width=1000))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = details(caught.value)
    violation = found["BadRequest"].field_violations[0]  # type: ignore[attr-defined]
    assert violation.field == "params.width"
    assert found["RequestInfo"].request_id  # type: ignore[attr-defined]
    assert trailing(caught.value, "x-request-id") == found["RequestInfo"].request_id  # type: ignore[attr-defined]
    assert (await stub.TextToImage(request())).result.images


async def test_engine_crash_is_internal_without_stack_trace(stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.TextToImage(request(prompt="fail"))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "Traceback" not in caught.value.details()
    assert "exploded" not in caught.value.details()
    assert "request id" in caught.value.details()
    assert (await stub.TextToImage(request())).result.images


async def test_out_of_memory_fails_only_that_job(stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.TextToImage(request(prompt="oom"))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await stub.TextToImage(request())).result.images


async def test_queue_full_is_resource_exhausted_at_once_with_retry_info() -> None:
    async with running_server(
        CAPABILITY, ["--step-seconds", "0.2", "--max-queue-size", "1"]
    ) as srv:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
            running = asyncio.ensure_future(stub.TextToImage(request(steps=10)))
            await asyncio.sleep(0.3)
            queued = asyncio.ensure_future(stub.TextToImage(request(steps=1)))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.TextToImage(request(steps=1))
            assert time.monotonic() - started < 1.0  # at once, never a hang
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            retry = details(caught.value)["RetryInfo"]
            assert retry.retry_delay.seconds + retry.retry_delay.nanos > 0  # type: ignore[attr-defined]
            # a full queue does not make the service unhealthy
            assert await health_status(channel, SERVICE) == SERVING
            running.cancel()
            await queued


async def test_cancel_job_from_another_connection_ends_stream(server, stub) -> None:
    stream = stub.StreamTextToImage(request(steps=200))
    first = await stream.read()
    job_id = first.accepted.job_id
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as other:
        other_stub = t2i_pb2_grpc.ImageGenerationServiceStub(other)
        await asyncio.sleep(0.2)
        reply = await other_stub.CancelJob(job_pb2.CancelJobRequest(job_id=job_id))
        assert reply.job.state == job_pb2.JOB_STATE_CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(drain(stream), timeout=10)
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    # the device is free at once: the next job completes quickly
    started = time.monotonic()
    await stub.TextToImage(request(steps=1))
    assert time.monotonic() - started < 5


async def test_client_cancel_frees_the_executor(server, stub) -> None:
    stream = stub.StreamTextToImage(request(steps=200))
    job_id = (await stream.read()).accepted.job_id
    await asyncio.sleep(0.2)
    stream.cancel()
    for _ in range(100):
        job = (await stub.GetJob(job_pb2.GetJobRequest(job_id=job_id))).job
        if job.state == job_pb2.JOB_STATE_CANCELLED:
            break
        await asyncio.sleep(0.05)
    assert job.state == job_pb2.JOB_STATE_CANCELLED
    await asyncio.wait_for(stub.TextToImage(request(steps=1)), timeout=5)


async def test_deadline_covers_queue_and_run(stub) -> None:
    blocker = asyncio.ensure_future(stub.TextToImage(request(steps=8)))  # ~0.4 s
    await asyncio.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.TextToImage(request(steps=100), timeout=0.8)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3
    await blocker


async def test_health_and_model_info_never_wait_behind_a_job(server, stub) -> None:
    long_job = asyncio.ensure_future(stub.TextToImage(request(steps=40)))  # ~2 s
    await asyncio.sleep(0.2)
    started = time.monotonic()
    info = await stub.GetModelInfo(t2i_pb2.GetModelInfoRequest())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert await health_status(channel, SERVICE) == SERVING
    assert time.monotonic() - started < 1.0  # the job holds the device for ~2 s
    assert info.model_info.state == model_pb2.MODEL_STATE_READY
    assert info.model_info.family == "sleepy"
    long_job.cancel()


async def test_unknown_job_is_not_found(stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetJob(job_pb2.GetJobRequest(job_id="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CancelJob(job_pb2.CancelJobRequest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_large_messages_up_to_the_configured_limit(stub) -> None:
    big = "x" * (6 * 1024 * 1024)  # over gRPC's 4 MiB default
    reply = await stub.TextToImage(request(prompt=big, steps=1))
    assert reply.result.images


async def test_health_not_serving_while_loading_then_serving() -> None:
    async with running_server(CAPABILITY, ["--load-seconds", "1.0"], wait_loaded=False) as srv:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            assert await health_status(channel) == NOT_SERVING
            assert await health_status(channel, SERVICE) == NOT_SERVING
            stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.TextToImage(request())
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            info = await stub.GetModelInfo(t2i_pb2.GetModelInfoRequest())
            assert info.model_info.state in (
                model_pb2.MODEL_STATE_LOADING,
                model_pb2.MODEL_STATE_WARMING_UP,
            )
            await wait_for_health(channel, SERVING, SERVICE, timeout=30)
            assert await health_status(channel) == SERVING


async def test_load_failure_stays_up_not_serving_with_reason() -> None:
    async with running_server(CAPABILITY, ["--fail-load"]) as srv:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            assert await health_status(channel, SERVICE) == NOT_SERVING
            stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
            info = await stub.GetModelInfo(t2i_pb2.GetModelInfoRequest())
            assert info.model_info.state == model_pb2.MODEL_STATE_FAILED
            assert "weights not found" in info.model_info.load_error
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.TextToImage(request())
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_api_keys_and_open_health() -> None:
    async with running_server(CAPABILITY, ["--api-keys", "ci:s3cret"]) as srv:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
            for metadata in ((), (("authorization", "Bearer wrong"),)):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.GetModelInfo(t2i_pb2.GetModelInfoRequest(), metadata=metadata)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            good = (("authorization", "Bearer s3cret"),)
            assert (await stub.TextToImage(request(), metadata=good)).result.images
            assert await health_status(channel, SERVICE) == SERVING  # probes need no key


async def test_rate_limit_per_key() -> None:
    argv = ["--api-keys", "a:ka,b:kb", "--rate-limit-per-second", "0.5", "--rate-limit-burst", "2"]
    async with running_server(CAPABILITY, argv) as srv:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
            key_a = (("authorization", "Bearer ka"),)
            for _ in range(2):
                await stub.GetModelInfo(t2i_pb2.GetModelInfoRequest(), metadata=key_a)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetModelInfo(t2i_pb2.GetModelInfoRequest(), metadata=key_a)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert details(caught.value)["RetryInfo"].retry_delay.seconds >= 1  # type: ignore[attr-defined]
            await stub.GetModelInfo(
                t2i_pb2.GetModelInfoRequest(), metadata=(("authorization", "Bearer kb"),)
            )


async def test_metrics_over_http(server, stub) -> None:
    await stub.TextToImage(request())
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.TextToImage(request(width=1000))
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    method = "/mmserve.t2i.v1.ImageGenerationService/TextToImage"
    assert f'mmserve_requests_total{{code="OK",method="{method}"}} 1.0' in text
    assert f'mmserve_requests_total{{code="INVALID_ARGUMENT",method="{method}"}} 1.0' in text
    for name in (
        "mmserve_request_duration_seconds_bucket",
        "mmserve_queue_depth",
        "mmserve_queue_wait_seconds_bucket",
        "mmserve_job_duration_seconds_bucket",
        "mmserve_model_load_seconds",
        "mmserve_device_memory_bytes",
        'mmserve_info{capability="sleepy"',
    ):
        assert name in text, name


def test_reflection_lists_and_describes_with_grpcurl(tmp_path: Path) -> None:
    grpcurl = shutil.which("grpcurl") or str(Path(__file__).parents[2] / ".venv/bin/grpcurl")
    server = start_process("tests.support.sleepy_service", [], tmp_path / "server.log")
    try:
        listed = subprocess.run(
            [grpcurl, "-plaintext", server.target, "list"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.split()
        assert SERVICE in listed
        assert "grpc.health.v1.Health" in listed
        described = "".join(
            subprocess.run(
                [grpcurl, "-plaintext", server.target, "describe", symbol],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
            for symbol in (SERVICE, "mmserve.t2i.v1.GenerationParams")
        )
        assert "returns ( stream .mmserve.t2i.v1.StreamTextToImageResponse )" in described
        assert "optional uint64 seed = 7;" in described
        health = subprocess.run(
            [
                grpcurl,
                "-plaintext",
                "-d",
                json.dumps({"service": SERVICE}),
                server.target,
                "grpc.health.v1.Health/Check",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert health.returncode == 0, health.stderr
    finally:
        server.stop()


async def test_sigterm_drains_in_flight_work_then_exits_zero(tmp_path: Path) -> None:
    server = start_process(
        "tests.support.sleepy_service",
        ["--step-seconds", "0.05", "--drain-grace-seconds", "20"],
        tmp_path / "server.log",
    )
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            await wait_for_health(channel, SERVING, SERVICE, timeout=60)
            stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
            in_flight = asyncio.ensure_future(stub.TextToImage(request(steps=30)))  # ~1.5 s
            queued = asyncio.ensure_future(stub.TextToImage(request(steps=10)))
            await asyncio.sleep(0.3)
            server.terminate()
            await wait_for_health(channel, NOT_SERVING, SERVICE, timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.TextToImage(request(steps=1))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert (await in_flight).result.images  # nothing lost
            assert (await queued).result.images
        assert await asyncio.to_thread(server.wait, 30) == 0, server.log()
        assert '"event": "stopped", "drained": true' in server.log()
    finally:
        server.stop()


def test_bad_config_fails_at_start_naming_the_field(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.sleepy_service", "--max-queue-size", "-3"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 2
    assert "max_queue_size" in done.stderr
