"""The vl clients against the real vl service on its tiny Qwen2.5-VL: images from PIL, bytes and
paths, multi-turn conversations, streamed deltas that add up to the unary answer, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from mmserve_client import (
    Accepted,
    Completed,
    FinishReason,
    InvalidArgument,
    Message,
    SamplingOptions,
    TextDelta,
    VLClient,
    aio,
)
from tests.clients.helpers import gradient, png
from tests.clients.servers import Served

GREEDY: SamplingOptions = {"max_new_tokens": 6, "temperature": 0.0, "seed": 1}


@pytest.fixture
def vl(vl_server: Served):
    with VLClient(vl_server.target, timeout=60) as client:
        yield client


def test_chat_with_images_of_every_kind(vl: VLClient, tmp_path: Path) -> None:
    path = tmp_path / "in.png"
    path.write_bytes(png(48, 40))
    images = [Image.fromarray(gradient(40, 32)), png(32, 32), path, gradient(24, 24)]
    reply = vl.chat("What differs between these images?", images=images, **GREEDY)
    assert reply.text
    assert reply.finish_reason is FinishReason.LENGTH
    assert reply.usage.output_tokens == 6
    assert reply.usage.input_tokens > 20  # the image placeholder tokens count
    assert reply.job_id


def test_stream_deltas_join_to_the_unary_answer(vl: VLClient) -> None:
    unary = vl.chat("Describe the picture.", images=[png()], **GREEDY)
    with vl.stream_chat("Describe the picture.", images=[png()], **GREEDY) as stream:
        events = list(stream)
    assert isinstance(events[0], Accepted)
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert [d.output_tokens for d in deltas] == list(range(1, len(deltas) + 1))
    assert isinstance(events[-1], Completed)
    assert events[-1].usage.output_tokens == 6
    assert stream.text == unary.text == "".join(d.text for d in deltas)


def test_conversation_with_system_and_history(vl: VLClient) -> None:
    messages = [
        Message.user(png(), "What colour is it?"),
        Message.assistant("Red."),
        {"role": "user", "content": "And the shape?"},
    ]
    reply = vl.chat(messages, system="Answer briefly.", stop=["\n"], **GREEDY)
    assert reply.finish_reason in (FinishReason.LENGTH, FinishReason.STOP)


def test_wrong_role_order_names_the_field(vl: VLClient) -> None:
    with pytest.raises(InvalidArgument) as caught:
        vl.chat([Message.user("hi"), Message.assistant("hello")], max_new_tokens=2)
    assert "messages[1].role" in [v.field for v in caught.value.field_violations]
    with pytest.raises(InvalidArgument) as caught:
        vl.chat("hi", temperature=5.0)
    assert [v.field for v in caught.value.field_violations] == ["sampling.temperature"]


async def test_async_stream_and_unary(vl_server: Served) -> None:
    async with aio.VLClient(vl_server.target, timeout=60) as client:
        reply = await client.chat("Hello", **GREEDY)
        stream = client.stream_chat("Hello", **GREEDY)
        async with stream:
            events = [event async for event in stream]
        assert isinstance(events[-1], Completed)
        assert stream.text == reply.text
        assert (await client.info()).model.family == "qwen2_5_vl"
