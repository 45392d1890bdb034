"""A test capability: the real runtime serving mmserve.t2i.v1 with an engine that sleeps per
step instead of denoising. Runtime tests use it to exercise queueing, streaming, cancellation,
health and errors through real servers without paying for a model; capability tests use real
tiny models instead.

Prompts steer it: "fail" raises inside the job, "oom" runs out of memory, "ignore-cancel"
never checks its cancel token.
"""

from __future__ import annotations

import io
import sys
import time
from typing import Any

import grpc
from PIL import Image
from pydantic import Field

from mmserve.common.v1 import media_pb2
from mmserve.t2i.v1 import t2i_pb2, t2i_pb2_grpc
from services.runtime import errors, job_protos
from services.runtime.app import JobsServicerMixin, ServiceRuntime, fill_job_event
from services.runtime.config import ServiceSettings
from services.runtime.engine import Engine, EngineInfo
from services.runtime.executor import JobContext, JobFinished, JobProgress
from services.runtime.server import Capability, main

SERVICE = "mmserve.t2i.v1.ImageGenerationService"


class SleepySettings(ServiceSettings):
    """Settings of the sleepy test service."""

    section = "sleepy"
    step_seconds: float = Field(0.05, ge=0, description="Sleep per step.")
    load_seconds: float = Field(0.0, ge=0, description="Simulated model load time.")
    fail_load: bool = Field(False, description="Make loading fail.")


class SleepyEngine(Engine):
    def __init__(self, settings: SleepySettings) -> None:
        self.settings = settings

    def load(self) -> None:
        time.sleep(self.settings.load_seconds)
        if self.settings.fail_load:
            raise RuntimeError("weights not found (simulated)")

    def info(self) -> EngineInfo:
        return EngineInfo(
            family="sleepy",
            model_id="sleepy",
            architecture="SleepyEngine",
            dtype="float32",
            device="cpu",
            capabilities=("text_to_image",),
        )

    def generate(self, ctx: JobContext, prompt: str, steps: int, size: int) -> bytes:
        if prompt == "fail":
            raise RuntimeError("engine exploded (simulated)")
        if prompt == "oom":
            raise MemoryError("out of memory (simulated)")
        for step in range(steps):
            if prompt != "ignore-cancel":
                ctx.check()
            time.sleep(self.settings.step_seconds)
            ctx.progress(step + 1, steps)
        buffer = io.BytesIO()
        Image.new("RGB", (size, size), (step % 255, 0, 0)).save(buffer, "PNG")
        return buffer.getvalue()


class SleepyServicer(JobsServicerMixin, t2i_pb2_grpc.ImageGenerationServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        self.engine: SleepyEngine = runtime.engine  # type: ignore[assignment]

    def _job(self, request: t2i_pb2.TextToImageRequest) -> Any:
        params = request.params
        if not params.prompt:
            raise errors.InvalidArgument.for_field("params.prompt", "must not be empty")
        size = params.width if params.HasField("width") else 8
        if size > 64:
            raise errors.InvalidArgument.for_field("params.width", "must be <= 64")
        steps = params.num_inference_steps if params.HasField("num_inference_steps") else 4
        return lambda ctx: self.engine.generate(ctx, params.prompt, steps, size)

    def _result(self, png: bytes, usage: Any) -> t2i_pb2.GenerationResult:
        return t2i_pb2.GenerationResult(
            images=[media_pb2.Image(data=png, format=media_pb2.IMAGE_FORMAT_PNG)],
            usage=job_protos.usage(usage),
        )

    async def TextToImage(self, request: t2i_pb2.TextToImageRequest, context: Any) -> Any:
        png, usage = await self.runtime.run_job(context, "text_to_image", self._job(request))
        return t2i_pb2.TextToImageResponse(result=self._result(png, usage))

    async def StreamTextToImage(self, request: t2i_pb2.TextToImageRequest, context: Any) -> Any:
        stream = self.runtime.stream_job(context, "text_to_image", self._job(request))
        async for job_id, event in stream:
            reply = t2i_pb2.StreamTextToImageResponse()
            if fill_job_event(reply, job_id, event):
                pass
            elif isinstance(event, JobProgress):
                reply.step.progress.CopyFrom(job_protos.progress(event))
            elif isinstance(event, JobFinished):
                reply.result.CopyFrom(self._result(event.result, event.usage))
            else:
                continue
            yield reply

    async def GetModelInfo(self, request: t2i_pb2.GetModelInfoRequest, context: Any) -> Any:
        return t2i_pb2.GetModelInfoResponse(model_info=self.runtime.model_info())


def _add(server: grpc.aio.Server, runtime: ServiceRuntime) -> None:
    t2i_pb2_grpc.add_ImageGenerationServiceServicer_to_server(SleepyServicer(runtime), server)


CAPABILITY = Capability(
    name="sleepy",
    service_names=(SERVICE,),
    settings_cls=SleepySettings,
    create_engine=lambda settings: SleepyEngine(settings),  # type: ignore[arg-type]
    add_servicers=_add,
)

if __name__ == "__main__":
    sys.exit(main(CAPABILITY))
