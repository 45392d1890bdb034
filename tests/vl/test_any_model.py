"""A family the service has no code for (LLaVA: CLIP tower + Qwen2 language model) loads through
AutoModelForImageTextToText and AutoProcessor and is served like transformers runs it."""

from __future__ import annotations

import grpc
import pytest
import pytest_asyncio

from mmserve.vl.v1 import vl_pb2
from services.vl.capability import CAPABILITY
from tests.support.servers import running_server
from tests.vl.helpers import (
    USER,
    Reference,
    collect,
    image,
    message,
    picture,
    request,
    stream_text,
    stub,
    text,
)
from tests.vl.tiny_llava import tiny_llava_dir

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vl():
    async with running_server(CAPABILITY, ["--model", str(tiny_llava_dir())]) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield stub(channel)


async def test_any_image_text_to_text_model_is_served(vl) -> None:
    info = await vl.GetModelInfo(vl_pb2.GetModelInfoRequest(), timeout=30)
    assert info.model_info.family == "llava"
    assert info.model_info.architecture == "LlavaForConditionalGeneration"
    assert "image_resolution" not in info.model_info.capabilities
    assert info.limits.max_context_tokens == 2048

    first, second = picture(80, 60, seed=20), picture(60, 80, seed=21)
    chat = request(
        message(USER, image(first), text("and"), image(second), text("?")), max_new_tokens=16
    )
    reply = await vl.Chat(chat, timeout=120)
    expected, generated = Reference.load(tiny_llava_dir(), "llava").greedy(chat, 16)
    assert reply.text == expected
    assert reply.text
    assert reply.usage.output_tokens == generated
    assert stream_text(await collect(vl.StreamChat(chat, timeout=120))) == reply.text


async def test_fixed_resolution_models_refuse_image_resolution(vl) -> None:
    chat = request(
        message(USER, image(picture(64, 64, seed=22)), text("hi")),
        resolution=vl_pb2.ImageResolution(max_pixels=100_000),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vl.Chat(chat, timeout=60)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
