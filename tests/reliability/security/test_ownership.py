"""What one API key may see of another's work, and probes that need a key when the operator
closes them: through a real server (the sleepy t2i test service, auth on)."""

from __future__ import annotations

import contextlib

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mmserve.common.v1 import job_pb2
from mmserve.t2i.v1 import t2i_pb2, t2i_pb2_grpc
from tests.support.servers import running_server
from tests.support.sleepy_service import CAPABILITY, SERVICE

KEYS = "alice:sk-alice-5f0c,bob:sk-bob-91d2"
ALICE = (("authorization", "Bearer sk-alice-5f0c"),)
BOB = (("authorization", "Bearer sk-bob-91d2"),)


def _long_job() -> t2i_pb2.TextToImageRequest:
    return t2i_pb2.TextToImageRequest(
        params=t2i_pb2.GenerationParams(prompt="slow", num_inference_steps=400, width=8)
    )


async def test_jobs_answer_only_the_key_that_started_them() -> None:
    async with running_server(CAPABILITY, ["--api-keys", KEYS, "--step-seconds", "0.05"]) as srv:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
            call = stub.StreamTextToImage(_long_job(), metadata=ALICE, timeout=60)
            job_id = (await call.read()).accepted.job_id
            request = job_pb2.GetJobRequest(job_id=job_id)
            unknown = job_pb2.GetJobRequest(job_id="00000000-0000-4000-8000-000000000000")

            mine = await stub.GetJob(request, metadata=ALICE, timeout=5)
            assert mine.job.job_id == job_id
            for rpc, message in (
                (stub.GetJob, request),
                (stub.CancelJob, job_pb2.CancelJobRequest(job_id=job_id)),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as theirs:
                    await rpc(message, metadata=BOB, timeout=5)
                with pytest.raises(grpc.aio.AioRpcError) as nobody:
                    await stub.GetJob(unknown, metadata=BOB, timeout=5)
                # Word for word like an id that does not exist, apart from the id itself.
                assert theirs.value.code() == nobody.value.code() == grpc.StatusCode.NOT_FOUND
                assert theirs.value.details().replace(
                    job_id, "ID"
                ) == nobody.value.details().replace(unknown.job_id, "ID")
            # Bob's CancelJob changed nothing; Alice's own cancel works.
            still = await stub.GetJob(request, metadata=ALICE, timeout=5)
            assert still.job.state in (job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING)
            cancelled = await stub.CancelJob(
                job_pb2.CancelJobRequest(job_id=job_id), metadata=ALICE, timeout=5
            )
            assert cancelled.job.state == job_pb2.JOB_STATE_CANCELLED
            assert await call.code() == grpc.StatusCode.CANCELLED


async def test_closed_probes_need_a_key() -> None:
    argv = ["--api-keys", KEYS, "--no-open-probes"]
    async with running_server(CAPABILITY, argv) as srv:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = health_pb2.HealthCheckRequest(service=SERVICE)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health.Check(check, timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            watch = health.Watch(check, timeout=5)
            assert await watch.code() == grpc.StatusCode.UNAUTHENTICATED
            reply = await health.Check(check, metadata=ALICE, timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            listing = reflection_pb2.ServerReflectionRequest(list_services="")
            stream = reflection.ServerReflectionInfo(timeout=5)
            # The server may refuse the stream before the request is written: then the write
            # itself raises the refusal, and the call's code says the same.
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stream.write(listing)
                await stream.done_writing()
            assert await stream.code() == grpc.StatusCode.UNAUTHENTICATED
            stream = reflection.ServerReflectionInfo(metadata=BOB, timeout=5)
            await stream.write(listing)
            listed = await stream.read()
            await stream.done_writing()
            assert SERVICE in {s.name for s in listed.list_services_response.service}
