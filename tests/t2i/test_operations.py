"""The t2i operation table and stream renderer in-process, without a server: every RPC of the
service has an entry, and a step's progress is sent once, with its preview when it has one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from mmserve.common.v1 import media_pb2
from mmserve.t2i.v1 import t2i_pb2
from services.runtime.app import ServiceRuntime
from services.runtime.executor import JobProgress
from services.runtime.operations import Inline, Operation, Usage
from services.runtime.pipeline import service_descriptor
from services.t2i.capability import SERVICE_NAME
from services.t2i.config import T2ISettings
from services.t2i.editing_operations import ImageToImage
from services.t2i.engine import GenerationOutput, PreviewFrame, T2IEngine
from services.t2i.operations import TextToImage, operations
from services.t2i.rendering import Encoding, Generated, GenerationStream


class _Runtime:
    """What the renderer uses of the runtime: its CPU pool (here, the caller's thread)."""

    async def run_cpu(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


def test_the_table_answers_every_rpc_of_the_service_but_the_runtimes() -> None:
    settings = T2ISettings()
    runtime = ServiceRuntime("t2i", settings, T2IEngine(settings))
    try:
        table = operations(runtime)
    finally:
        runtime.close()
    methods = {method.name for method in service_descriptor(SERVICE_NAME).methods}
    assert set(table) == methods - {"GetJob", "CancelJob"}
    assert table["TextToImage"] is table["StreamTextToImage"]
    assert table["ImageToImage"] is table["StreamImageToImage"]
    assert isinstance(table["TextToImage"], TextToImage)
    assert isinstance(table["ImageToImage"], ImageToImage)
    assert isinstance(table["GetModelInfo"], Inline)
    assert all(op.kind for op in table.values() if isinstance(op, Operation))
    assert ImageToImage.prepares()  # decoding runs on the CPU pool
    assert not TextToImage.prepares()


def _progress(step: int) -> JobProgress:
    return JobProgress(step=step, total=4, elapsed_seconds=0.1 * step, eta_seconds=0.0)


def _frame(step: int) -> PreviewFrame:
    rgb = np.full((8, 8, 3), 40 * step, dtype=np.uint8)
    return PreviewFrame(step, 4, 0.1 * step, 0.0, rgb)


async def test_stream_sends_each_step_once_and_previews_carry_their_progress() -> None:
    stream = GenerationStream(
        _Runtime(),  # type: ignore[arg-type]
        t2i_pb2.StreamTextToImageResponse,
        preview_side=16,
    )
    sent = []
    for event in (_progress(1), _frame(2), _progress(2), _progress(3), _frame(4), _progress(4)):
        if isinstance(event, PreviewFrame):
            reply = await stream.output(event)
        else:
            reply = await stream.progress(event)
        if reply is not None:
            sent.append(reply)
    assert [reply.step.progress.step for reply in sent] == [1, 2, 3, 4]
    assert [reply.step.HasField("preview") for reply in sent] == [False, True, False, True]
    preview = sent[1].step.preview
    assert (preview.width, preview.height, preview.format) == (16, 16, media_pb2.IMAGE_FORMAT_PNG)
    assert await stream.output("not a preview") is None

    image = Image.new("RGB", (8, 4), (1, 2, 3))
    output = GenerationOutput([image], seed=5, steps=4, prompt_truncated=False, prompt_tokens=6)
    encoding = Encoding("JPEG", media_pb2.IMAGE_FORMAT_JPEG, 80)
    done = await stream.done(Generated(output, encoding), Usage(0.5, 1.5, 1))
    result = done.result
    assert result.images[0].data.startswith(b"\xff\xd8\xff")
    assert (result.images[0].width, result.images[0].height) == (8, 4)
    assert (result.seed, result.steps, result.usage.input_tokens) == (5, 4, 6)
    assert (result.usage.queue_seconds, result.usage.run_seconds) == (0.5, 1.5)
