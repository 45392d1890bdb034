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
from dataclasses import dataclass
from typing import Any

from PIL import Image
from pydantic import Field

from mmserve.common.v1 import media_pb2
from mmserve.t2i.v1 import t2i_pb2
from services.runtime import errors, job_protos
from services.runtime.app import ServiceRuntime
from services.runtime.config import ServiceSettings
from services.runtime.engine import Engine, EngineInfo
from services.runtime.executor import JobContext, JobProgress
from services.runtime.operations import (
    CallFacts,
    Inline,
    NotServed,
    Operation,
    OperationTable,
    StreamRenderer,
    Usage,
)
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


@dataclass(frozen=True)
class SleepyRequest:
    prompt: str
    steps: int
    size: int


class Generate(Operation[SleepyRequest, SleepyRequest, bytes]):
    """TextToImage and StreamTextToImage: sleeps `steps` times, then a PNG."""

    kind = "text_to_image"

    def parse(self, message: t2i_pb2.TextToImageRequest, call: CallFacts) -> SleepyRequest:
        params = message.params
        # One field at a time, as the edge and client tests expect its exact messages.
        if not params.prompt:
            raise errors.InvalidArgument.for_field("params.prompt", "must not be empty")
        size = params.width if params.HasField("width") else 8
        if size > 64:
            raise errors.InvalidArgument.for_field("params.width", "must be <= 64")
        steps = params.num_inference_steps if params.HasField("num_inference_steps") else 4
        return SleepyRequest(params.prompt, steps, size)

    def run(self, prepared: SleepyRequest, ctx: JobContext) -> bytes:
        engine = self.runtime.engine_as(SleepyEngine)
        return engine.generate(ctx, prepared.prompt, prepared.steps, prepared.size)

    async def render(self, result: bytes, usage: Usage) -> t2i_pb2.TextToImageResponse:
        return t2i_pb2.TextToImageResponse(result=_result(result, usage))

    def stream_renderer(self, prepared: SleepyRequest) -> StreamRenderer[bytes]:
        return _Steps()


class _Steps(StreamRenderer[bytes]):
    async def progress(self, event: JobProgress) -> t2i_pb2.StreamTextToImageResponse:
        reply = t2i_pb2.StreamTextToImageResponse()
        reply.step.progress.CopyFrom(job_protos.progress(event))
        return reply

    async def done(self, result: bytes, usage: Usage) -> t2i_pb2.StreamTextToImageResponse:
        return t2i_pb2.StreamTextToImageResponse(result=_result(result, usage))


def _result(png: bytes, usage: Usage) -> t2i_pb2.GenerationResult:
    return t2i_pb2.GenerationResult(
        images=[media_pb2.Image(data=png, format=media_pb2.IMAGE_FORMAT_PNG)],
        usage=job_protos.usage(usage),
    )


class ModelInfo(Inline):
    async def respond(self, message: Any, context: Any) -> t2i_pb2.GetModelInfoResponse:
        return t2i_pb2.GetModelInfoResponse(model_info=self.runtime.model_info())


def operations(runtime: ServiceRuntime) -> OperationTable:
    """The sleepy service's table: image-to-image is not served."""
    generate = Generate(runtime)
    return {
        "TextToImage": generate,
        "StreamTextToImage": generate,
        "ImageToImage": NotServed("the sleepy service only generates"),
        "StreamImageToImage": NotServed("the sleepy service only generates"),
        "InpaintImage": NotServed("the sleepy service only generates"),
        "StreamInpaintImage": NotServed("the sleepy service only generates"),
        "EditImage": NotServed("the sleepy service only generates"),
        "StreamEditImage": NotServed("the sleepy service only generates"),
        "GetModelInfo": ModelInfo(runtime),
    }


CAPABILITY = Capability(
    name="sleepy",
    service_names=(SERVICE,),
    settings_cls=SleepySettings,
    create_engine=lambda settings: SleepyEngine(settings),  # type: ignore[arg-type]
    operations=operations,
)

if __name__ == "__main__":
    sys.exit(main(CAPABILITY))
