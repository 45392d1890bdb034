"""Streaming text pieces: whole characters only, stop sequences cut and never streamed."""

from __future__ import annotations

from typing import Any

import pytest

from services.vl.decoding import IncrementalDecoder, StopMatcher, TextAssembler
from tests.vl.helpers import Reference


@pytest.fixture(scope="module")
def tokenizer(qwen25_reference: Reference) -> Any:
    return qwen25_reference.processor.tokenizer


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
