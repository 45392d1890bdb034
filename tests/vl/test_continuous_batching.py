"""Iteration-level batching of vl chats: requests decoding together get exactly the answers
they get alone (greedy, and sampled with a seed), and a request that arrives while another
decodes joins it at the next token and leaves when done."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import pytest_asyncio

from services.runtime.chat.continuous import decode_together
from services.runtime.chat.messages import (
    ChatOutput,
    FinishReason,
    ImagePart,
    Message,
    Role,
    TextPart,
)
from services.runtime.chat.sampling import Sampling
from services.runtime.errors import JobCancelled
from services.runtime.executor import JobContext
from services.vl.capability import CAPABILITY
from services.vl.chat import ChatInput
from services.vl.config import VLSettings
from services.vl.engine import CHAT_KIND, VLEngine
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


@pytest.fixture(scope="module")
def engine() -> VLEngine:
    engine = VLEngine(VLSettings())
    engine.load()
    engine.warmup()
    return engine


def _chat(*parts: object, tokens: int, **sampling: object) -> ChatInput:
    return ChatInput(
        (Message(Role.USER, tuple(parts)),),  # type: ignore[arg-type]
        Sampling(max_new_tokens=tokens, **sampling),  # type: ignore[arg-type]
    )


def test_the_built_in_model_decodes_together(engine: VLEngine) -> None:
    assert engine.joinable
    assert "batching" in engine.info().capabilities


def test_rows_decoded_together_match_each_request_alone(engine: VLEngine) -> None:
    chats = [
        _chat(ImagePart(picture(120, 90, seed=1)), TextPart("What?"), tokens=12),
        _chat(ImagePart(picture(64, 64, seed=2)), TextPart("Describe it, please."), tokens=20),
        _chat(TextPart("Hello there, how are you today?"), tokens=16),  # no image: own prefill
        _chat(
            ImagePart(picture(200, 100, seed=3)),
            ImagePart(picture(56, 100, seed=4)),
            TextPart("Compare."),
            tokens=16,
        ),
        _chat(ImagePart(picture(90, 90, seed=5)), TextPart("Hi"), tokens=10, stop=("a",)),
        _chat(
            ImagePart(picture(80, 80, seed=6)),
            TextPart("Sample"),
            tokens=14,
            temperature=0.9,
            top_p=0.9,
            top_k=40,
            repetition_penalty=1.2,
            seed=7,
        ),
    ]
    prepared = [engine.prepare(chat) for chat in chats]
    alone = [
        engine.generate(p, JobContext(f"alone-{i}", CHAT_KIND)) for i, p in enumerate(prepared)
    ]
    together = decode_together(engine.decoder(), prepared)
    for one, joined in zip(alone, together, strict=True):
        assert isinstance(joined, ChatOutput)
        assert (joined.text, joined.output_tokens, joined.finish_reason) == (
            one.text,
            one.output_tokens,
            one.finish_reason,
        )


def test_a_cancelled_row_ends_cancelled_and_the_others_finish(engine: VLEngine) -> None:
    chats = [_chat(TextPart(f"Tell me a story {i}"), tokens=12) for i in range(2)]
    prepared = [engine.prepare(chat) for chat in chats]
    contexts = [JobContext(f"row-{i}", CHAT_KIND) for i in range(2)]
    error = JobCancelled("cancelled by the test")
    contexts[0].cancel.cancel(error)
    results = decode_together(engine.decoder(), prepared, contexts)
    assert results[0] is error
    assert isinstance(results[1], ChatOutput)
    assert results[1].output_tokens >= 1
    assert results[1].finish_reason is not FinishReason.CANCELLED


on_server = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vl():
    async with running_server(CAPABILITY, ["--batch-max-size", "4"]) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield stub(channel)


@on_server
async def test_a_request_joins_a_running_decode_and_leaves_first(
    vl, qwen25_reference: Reference
) -> None:
    long = request(message(USER, image(picture(64, 64, seed=30)), text("Go on")), max_new_tokens=60)
    short = request(message(USER, image(picture(72, 48, seed=31)), text("Hi")), max_new_tokens=4)
    long_call = vl.StreamChat(long, timeout=300)
    events = []
    async for event in long_call:
        events.append(event)
        if event.WhichOneof("event") == "delta":
            break
    # The long answer is still decoding: the short one joins it and ends before it.
    short_reply = await vl.Chat(short, timeout=300)
    rest = await collect(long_call)
    events += rest
    deltas_after = [e for e in rest if e.WhichOneof("event") == "delta"]
    assert deltas_after, "the long answer had finished before the short one joined"
    assert short_reply.usage.batch_size == 2
    expected, generated = qwen25_reference.greedy(short, 4)
    assert (short_reply.text, short_reply.usage.output_tokens) == (expected, generated)
    expected, generated = qwen25_reference.greedy(long, 60)
    assert stream_text(events) == expected
    assert events[-1].completed.usage.output_tokens == generated


@on_server
async def test_concurrent_mixed_requests_answer_as_alone(vl, qwen25_reference: Reference) -> None:
    chats = [
        request(
            message(USER, image(picture(100, 80, seed=40 + i)), text("What?" * (i + 1))),
            max_new_tokens=6 + 3 * i,
        )
        for i in range(4)
    ] + [request(message(USER, text("No picture here.")), max_new_tokens=9)]
    replies = await asyncio.gather(*(vl.Chat(chat, timeout=300) for chat in chats))
    for chat, reply in zip(chats, replies, strict=True):
        expected, generated = qwen25_reference.greedy(chat, chat.sampling.max_new_tokens)
        assert (reply.text, reply.usage.output_tokens) == (expected, generated)
    assert max(reply.usage.batch_size for reply in replies) > 1
