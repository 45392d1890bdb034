"""Iteration-level batching of omni's text chats with the real SmolLM2-135M-Instruct: chats
decoding together answer exactly as one at a time (greedy), a chat that arrives while another
decodes joins it and leaves first, a cancelled stream leaves the others whole, and spoken
replies still run alone."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from mmserve.common.v1 import chat_pb2
from mmserve.omni.v1 import omni_pb2, omni_pb2_grpc
from services.omni.config import OmniSettings
from services.omni.engine import OmniEngine, VoiceChoice
from services.omni.turns import ChatJob, ChatResult, SpeechRequest
from services.runtime.chat.continuous import decode_together
from services.runtime.chat.messages import Message, Role, TextPart
from services.runtime.chat.sampling import SamplingPlan
from tests.omni.support import start_omni, text_part, user

# The machine these run on may be loaded: answers are kept short.
pytestmark = pytest.mark.timeout(900)

# Identity with one-at-a-time decoding holds in fp32. In bf16 (auto's choice for SmolLM2 on a
# CPU with bf16 instructions) a row's rounding depends on the batch's shape, so a batched greedy
# answer can part from the lone one after some tokens, as in other batching servers (docs/omni.md).
EXACT_DTYPE = "fp32"
OMNI_TEXT_ONLY = ("--tts-model", "none", "--asr-model", "none")

QUESTIONS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Hi",
    "Name three colors of the rainbow.",
)


def _drop(_: object) -> None:
    pass


class _Prepared:
    def __init__(self, prompt: object) -> None:
        self.prompt = prompt


@pytest.fixture(scope="module")
def engine(smollm2_folder) -> OmniEngine:
    engine = OmniEngine(OmniSettings(tts_model="none", asr_model="none", dtype=EXACT_DTYPE))
    engine.load()
    engine.warmup()
    return engine


def _job(question: str, tokens: int, stop: tuple[str, ...] = ()) -> ChatJob:
    plan = SamplingPlan(max_new_tokens=tokens, stop=stop)
    return ChatJob((Message(Role.USER, (TextPart(question),)),), plan)


def test_chats_decoded_together_match_each_alone(engine: OmniEngine) -> None:
    assert engine.decoder() is not None
    jobs = [_job(q, n) for q, n in zip(QUESTIONS, (8, 12, 6, 10), strict=True)]
    jobs.append(_job("Count from one to ten.", 14, stop=("5",)))

    def alone(job: ChatJob) -> ChatResult:
        return engine.respond(job, VoiceChoice(), emit_text=_drop, emit_audio=_drop)

    expected = [alone(job) for job in jobs]
    prepared = [_Prepared(engine.tokenize(job, stream=False)) for job in jobs]
    together = decode_together(engine.decoder(), prepared)
    for one, joined in zip(expected, together, strict=True):
        assert isinstance(joined, ChatResult)
        assert (joined.text, joined.output_tokens, joined.finish_reason) == (
            one.text,
            one.output_tokens,
            one.finish_reason,
        )
        assert joined.input_tokens == one.input_tokens


def test_spoken_chats_do_not_join(engine: OmniEngine) -> None:
    spoken = ChatJob(_job("Hi", 4).messages, SamplingPlan(4), SpeechRequest(enabled=True))
    assert engine.tokenize(spoken, stream=False) is None


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_folder):
    process = start_omni(
        tmp_path_factory.mktemp("omni-batching"),
        [*OMNI_TEXT_ONLY, "--batch-max-size", "4", "--dtype", EXACT_DTYPE],
    )
    yield process
    process.stop()


@pytest.fixture
async def stub(server):
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield omni_pb2_grpc.OmniServiceStub(channel)


def _request(question: str, tokens: int) -> omni_pb2.ChatRequest:
    return omni_pb2.ChatRequest(
        messages=[user(text_part(question))],
        sampling=chat_pb2.SamplingParams(max_new_tokens=tokens),
    )


def _text(events: list[omni_pb2.StreamChatResponse]) -> str:
    return "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")


async def test_concurrent_chats_answer_as_alone(stub, engine: OmniEngine) -> None:
    requests = [_request(q, 8) for q in QUESTIONS]
    replies = await asyncio.gather(*(stub.Chat(r, timeout=300) for r in requests))
    for question, reply in zip(QUESTIONS, replies, strict=True):
        alone = engine.respond(_job(question, 8), VoiceChoice(), emit_text=_drop, emit_audio=_drop)
        assert reply.text == alone.text
        assert reply.usage.output_tokens == alone.output_tokens
    assert max(reply.usage.batch_size for reply in replies) > 1


async def test_a_chat_joins_a_running_stream_and_a_cancel_spares_the_others(stub) -> None:
    long_call = stub.StreamChat(_request("Tell me a long story about a dragon.", 30), timeout=900)
    doomed_call = stub.StreamChat(_request("Tell me about the moon.", 30), timeout=900)
    seen = []
    async for event in long_call:
        seen.append(event)
        if event.WhichOneof("event") == "delta":
            break
    async for event in doomed_call:
        if event.WhichOneof("event") == "delta":
            doomed_call.cancel()
            break
    short = await stub.Chat(_request("Hi", 4), timeout=300)
    assert short.usage.output_tokens <= 4
    assert short.usage.batch_size >= 2  # it decoded alongside the long story
    rest = [event async for event in long_call]
    assert [e for e in rest if e.WhichOneof("event") == "delta"], "the story ended first"
    completed = rest[-1].completed
    assert completed.finish_reason in (chat_pb2.FINISH_REASON_LENGTH, chat_pb2.FINISH_REASON_STOP)
    assert completed.usage.output_tokens > 4
    assert len(_text(seen + rest)) > 0
    assert doomed_call.cancelled()
