"""The batching option (iteration-level: requests decode together, joining and leaving the
decode batch at token boundaries): concurrent requests share the batch and still get exactly
their own greedy answers, streams stream their own text, a cancel stops only its row."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import pytest_asyncio

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
async def vl():
    # A generous wait so that requests decoded by a busy CI machine still meet in one batch.
    argv = ["--batching", "--batch-max-size", "4", "--batch-max-wait-ms", "500"]
    async with running_server(CAPABILITY, argv) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield stub(channel)


async def test_concurrent_requests_are_batched_and_answered_exactly(
    vl, qwen25_reference: Reference
) -> None:
    # Different prompt lengths (left padding), image counts and sizes, and answer lengths.
    first, second = picture(200, 100, seed=12), picture(56, 100, seed=13)
    chats = [
        request(message(USER, image(picture(120, 90, seed=10)), text("What?")), max_new_tokens=12),
        request(
            message(USER, image(picture(64, 64, seed=11)), text("Describe it in detail, please.")),
            max_new_tokens=20,
        ),
        request(message(USER, image(first), image(second), text("Compare.")), max_new_tokens=16),
        request(message(USER, image(picture(90, 90, seed=14)), text("Hi")), max_new_tokens=8),
    ]
    replies = await asyncio.gather(*(vl.Chat(chat, timeout=120) for chat in chats))
    assert max(reply.usage.batch_size for reply in replies) > 1
    for chat, reply in zip(chats, replies, strict=True):
        expected, generated = qwen25_reference.greedy(chat, chat.sampling.max_new_tokens)
        assert reply.text == expected
        assert reply.usage.output_tokens == generated


async def test_streams_still_work_with_batching_on(vl) -> None:
    chat = request(message(USER, image(picture(64, 48, seed=15)), text("Hi")), max_new_tokens=8)
    unary = await vl.Chat(chat, timeout=120)
    assert stream_text(await collect(vl.StreamChat(chat, timeout=120))) == unary.text


async def test_concurrent_streams_share_a_batch_and_stream_their_own_answers(
    vl, qwen25_reference: Reference
) -> None:
    chats = [
        request(message(USER, image(picture(80, 60, seed=20)), text("What?")), max_new_tokens=10),
        request(
            message(USER, image(picture(48, 96, seed=21)), text("Tell me more about it.")),
            max_new_tokens=14,
        ),
        request(message(USER, image(picture(72, 72, seed=22)), text("Hi")), max_new_tokens=6),
    ]
    streams = await asyncio.gather(*(collect(vl.StreamChat(chat, timeout=120)) for chat in chats))
    batch_sizes = []
    for chat, events in zip(chats, streams, strict=True):
        expected, generated = qwen25_reference.greedy(chat, chat.sampling.max_new_tokens)
        deltas = [e for e in events if e.WhichOneof("event") == "delta"]
        # Each row streamed its own text, token by token, not one lump at the end.
        assert len(deltas) > 1
        assert stream_text(events) == expected
        completed = events[-1].completed
        assert completed.usage.output_tokens == generated
        batch_sizes.append(completed.usage.batch_size)
    assert max(batch_sizes) > 1


async def test_a_cancelled_stream_leaves_its_batch_neighbours_whole(
    vl, qwen25_reference: Reference
) -> None:
    keep = request(message(USER, image(picture(64, 64, seed=23)), text("Hi")), max_new_tokens=12)
    drop = request(message(USER, image(picture(64, 64, seed=24)), text("Yo")), max_new_tokens=40)
    kept_call = vl.StreamChat(keep, timeout=120)
    dropped_call = vl.StreamChat(drop, timeout=120)

    async def cancel_after_first_delta() -> None:
        async for event in dropped_call:
            if event.WhichOneof("event") == "delta":
                dropped_call.cancel()
                return

    kept, _ = await asyncio.gather(collect(kept_call), cancel_after_first_delta())
    expected, _ = qwen25_reference.greedy(keep, keep.sampling.max_new_tokens)
    assert stream_text(kept) == expected
    assert dropped_call.cancelled()
