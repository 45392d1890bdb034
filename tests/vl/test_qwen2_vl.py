"""Qwen2-VL (the older family, its own classes) served from its model folder."""

from __future__ import annotations

from pathlib import Path

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

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vl(qwen2_dir: Path):
    async with running_server(CAPABILITY, ["--model", str(qwen2_dir)]) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield stub(channel)


async def test_qwen2_vl_is_served_like_transformers_runs_it(vl, qwen2_dir: Path) -> None:
    info = await vl.GetModelInfo(vl_pb2.GetModelInfoRequest(), timeout=30)
    assert info.model_info.family == "qwen2_vl"
    assert info.model_info.architecture == "Qwen2VLForConditionalGeneration"
    assert info.model_info.model_id == str(qwen2_dir)

    first, second = picture(96, 64, seed=7), picture(64, 96, seed=8)
    chat = request(
        message(USER, image(first), text("What is it?"), image(second)), max_new_tokens=24
    )
    reply = await vl.Chat(chat, timeout=120)
    expected, generated = Reference.load(qwen2_dir, "qwen2_vl").greedy(chat, 24)
    assert reply.text == expected
    assert reply.usage.output_tokens == generated
    events = await collect(vl.StreamChat(chat, timeout=120))
    assert stream_text(events) == reply.text
