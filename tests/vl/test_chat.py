"""The vl service with its default model (tiny Qwen2.5-VL) through a real server and the
generated stubs: answers match plain transformers, streams match unary calls, images keep
their order, seeds repeat, stop sequences and resolutions apply."""

from __future__ import annotations

import grpc
import pytest
import pytest_asyncio
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from mmserve.common.v1 import chat_pb2
from mmserve.vl.v1 import vl_pb2
from services.runtime.chat.messages import ImagePart, Message, Role, TextPart
from services.runtime.chat.sampling import Sampling
from services.vl.builtin.qwen import IMAGE_PAD_ID, VISION_END_ID, VISION_START_ID
from services.vl.capability import CAPABILITY
from services.vl.chat import ChatInput
from services.vl.config import QWEN_DEFAULT_MAX_PIXELS, QWEN_MIN_PIXELS
from services.vl.engine import VLEngine
from tests.support.servers import running_server
from tests.vl.helpers import (
    ASSISTANT,
    SYSTEM,
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

WIDE = picture(160, 80, seed=1)  # 168x84 after resizing: 6x12 patches, 18 image tokens
TALL = picture(56, 112, seed=2)  # 56x112: 8x4 patches, 8 image tokens


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    # No --model: the default local run serves the built-in tiny Qwen2.5-VL.
    async with running_server(CAPABILITY, ["--max-images", "3"]) as srv:
        yield srv


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vl(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield stub(channel)


def conversation() -> vl_pb2.ChatRequest:
    """Several turns, a system prompt, and images in two user messages."""
    return request(
        message(SYSTEM, text("You answer in one sentence.")),
        message(USER, image(WIDE), text("What is in this picture?")),
        message(ASSISTANT, text("Noise, mostly.")),
        message(USER, text("And this one? ß 你好 🙂"), image(TALL)),
        max_new_tokens=32,
    )


async def test_served_greedy_answer_equals_in_process_generate(
    vl, qwen25_reference: Reference
) -> None:
    chat = conversation()
    reply = await vl.Chat(chat, timeout=120)
    expected, generated = qwen25_reference.greedy(chat, max_new_tokens=32)
    assert reply.text == expected
    assert reply.text  # a random model still answers something
    assert reply.usage.output_tokens == generated
    assert reply.usage.input_tokens == qwen25_reference.inputs(chat)["input_ids"].shape[1]
    assert reply.usage.total_tokens == reply.usage.input_tokens + reply.usage.output_tokens
    assert reply.finish_reason == (
        chat_pb2.FINISH_REASON_LENGTH if generated == 32 else chat_pb2.FINISH_REASON_STOP
    )


async def test_stream_concatenation_equals_unary_answer(vl) -> None:
    chat = conversation()
    unary = await vl.Chat(chat, timeout=120)
    events = await collect(vl.StreamChat(chat, timeout=120))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "accepted"
    assert kinds[-1] == "completed"
    assert set(kinds) <= {"accepted", "queue", "delta", "heartbeat", "completed"}
    assert {e.job_id for e in events} == {events[0].accepted.job_id}
    assert stream_text(events) == unary.text
    counts = [e.delta.output_tokens for e in events if e.HasField("delta")]
    assert counts == sorted(counts)
    assert all("\ufffd" not in e.delta.text for e in events if e.HasField("delta"))
    completed = events[-1].completed
    assert completed.finish_reason == unary.finish_reason
    assert completed.usage.output_tokens == unary.usage.output_tokens
    assert completed.usage.input_tokens == unary.usage.input_tokens


def expected_grid(picture_: object) -> list[int]:
    """(frames, patch rows, patch columns) Qwen's resize rule gives at the default bounds."""
    width, height = picture_.size  # type: ignore[attr-defined]
    rows, cols = smart_resize(height, width, 28, QWEN_MIN_PIXELS, QWEN_DEFAULT_MAX_PIXELS)
    return [1, rows // 14, cols // 14]


async def test_two_images_reach_the_model_in_order(vl, server, qwen25_reference: Reference) -> None:
    engine: VLEngine = server.runtime.engine
    chat = ChatInput(
        (Message(Role.USER, (ImagePart(WIDE), ImagePart(TALL), TextPart("Compare them."))),)
    )
    prepared = engine.prepare(chat)
    grids = prepared.inputs["image_grid_thw"].tolist()
    expected = [expected_grid(WIDE), expected_grid(TALL)]
    assert grids == expected
    ids = prepared.inputs["input_ids"][0].tolist()
    runs, inside = [], False
    for token in ids:
        if token == VISION_START_ID:
            runs.append(0)
            inside = True
        elif token == VISION_END_ID:
            inside = False
        elif inside:
            assert token == IMAGE_PAD_ID
            runs[-1] += 1
    assert runs == [t * h * w // 4 for t, h, w in expected]  # 2x2 patches merge to one token
    assert runs[0] != runs[1]

    forward = request(message(USER, image(WIDE), image(TALL), text("Compare them.")))
    backward = request(message(USER, image(TALL), image(WIDE), text("Compare them.")))
    for chat_request in (forward, backward):
        chat_request.sampling.max_new_tokens = 16
    served_forward = await vl.Chat(forward, timeout=120)
    served_backward = await vl.Chat(backward, timeout=120)
    assert served_forward.usage.input_tokens == prepared.input_tokens
    assert served_forward.text == qwen25_reference.greedy(forward, 16)[0]
    assert served_backward.text == qwen25_reference.greedy(backward, 16)[0]
    assert served_forward.text != served_backward.text


async def test_seeded_sampling_repeats(vl) -> None:
    def sampled(seed: int | None) -> vl_pb2.ChatRequest:
        chat = request(
            message(USER, image(WIDE), text("Tell me a story.")),
            max_new_tokens=24,
            temperature=1.5,
            top_p=0.95,
            top_k=1000,
        )
        if seed is not None:
            chat.sampling.seed = seed
        return chat

    first = await vl.Chat(sampled(1234), timeout=120)
    again = await vl.Chat(sampled(1234), timeout=120)
    other = await vl.Chat(sampled(99), timeout=120)
    assert first.seed == 1234
    assert first.text == again.text
    assert first.text != other.text
    streamed = await collect(vl.StreamChat(sampled(1234), timeout=120))
    assert stream_text(streamed) == first.text
    # An unset seed is drawn at random and reported, so the answer can be reproduced.
    free = await vl.Chat(sampled(None), timeout=120)
    replay = await vl.Chat(sampled(free.seed), timeout=120)
    assert replay.text == free.text


async def test_stop_sequence_ends_the_answer_before_it(vl) -> None:
    chat = request(message(USER, image(TALL), text("Say something.")), max_new_tokens=40)
    full = (await vl.Chat(chat, timeout=120)).text
    stop = full[12:15]
    assert len(stop) == 3
    chat.sampling.stop.extend(["never-generated-xyz", stop])
    cut = await vl.Chat(chat, timeout=120)
    assert cut.text == full[: full.index(stop)]
    assert cut.finish_reason == chat_pb2.FINISH_REASON_STOP
    events = await collect(vl.StreamChat(chat, timeout=120))
    assert stream_text(events) == cut.text
    assert events[-1].completed.finish_reason == chat_pb2.FINISH_REASON_STOP


async def test_image_resolution_per_request(vl, qwen25_reference: Reference) -> None:
    big = picture(400, 300, seed=3)
    chat = request(message(USER, image(big), text("Describe.")), max_new_tokens=4)
    default = await vl.Chat(chat, timeout=120)
    chat.image_resolution.max_pixels = 4 * QWEN_MIN_PIXELS
    small = await vl.Chat(chat, timeout=120)
    size = {"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": 4 * QWEN_MIN_PIXELS}
    expected = qwen25_reference.inputs(chat, size=size)["input_ids"].shape[1]
    assert small.usage.input_tokens == expected
    assert small.usage.input_tokens < default.usage.input_tokens


async def test_max_new_tokens_is_capped_by_config_and_context(server) -> None:
    engine: VLEngine = server.runtime.engine
    short = ChatInput((Message(Role.USER, (TextPart("Hi"),)),), Sampling(max_new_tokens=10**6))
    prepared = engine.prepare(short)
    assert prepared.plan.max_new_tokens == min(
        engine.settings.max_new_tokens, engine.context_tokens - prepared.input_tokens
    )
    long_text = TextPart("word " * (engine.context_tokens - 100))
    near_full = ChatInput((Message(Role.USER, (long_text,)),), Sampling(max_new_tokens=10**6))
    prepared = engine.prepare(near_full)
    assert prepared.plan.max_new_tokens == engine.context_tokens - prepared.input_tokens
    assert 0 < prepared.plan.max_new_tokens < 100
    unset = engine.prepare(ChatInput((Message(Role.USER, (TextPart("Hi"),)),)))
    assert unset.plan.max_new_tokens == engine.settings.default_max_new_tokens == 256


async def test_model_info_reports_family_and_limits(vl) -> None:
    info = await vl.GetModelInfo(vl_pb2.GetModelInfoRequest(), timeout=30)
    assert info.model_info.family == "qwen2_5_vl"
    assert info.model_info.architecture == "Qwen2_5_VLForConditionalGeneration"
    assert "image_resolution" in info.model_info.capabilities
    limits = info.limits
    assert limits.max_context_tokens == 4096
    assert limits.max_images == 3
    assert limits.max_new_tokens == 4096
    assert limits.default_image_resolution.min_pixels == QWEN_MIN_PIXELS
    assert limits.default_image_resolution.max_pixels == QWEN_DEFAULT_MAX_PIXELS
    assert limits.min_image_pixels <= limits.max_image_pixels
