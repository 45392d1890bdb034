"""Speech sooner: the reply's first clause goes to the voice before the rest is written (real
Piper voice), and where a piece ends (clause marks, a few words, never inside "1,000")."""

from __future__ import annotations

import pytest

from services.omni.speech import FIRST_PIECE_WORDS, SentenceSpeaker, SpeechWriter, first_piece_end
from services.omni.turns import AudioOut
from tests.omni.support import piper


@pytest.mark.parametrize(
    ("text", "piece"),
    [
        ("Sure, here", "Sure, "),
        ("Paris is the capital. It", "Paris is the capital. "),
        ("Well: yes", "Well: "),
        ("It is big - very big", "It is big - "),
        ("Hello", None),
        ("1,000 people live", None),  # no space after the comma
        ("The capital of France", None),  # three complete words so far
        ("The capital of France is Paris", "The capital of France "),
        (", hm", None),  # a mark with nothing before it is not a clause
    ],
)
def test_first_piece_ends_at_a_clause_or_after_a_few_words(text, piece):
    end = first_piece_end(text)
    assert (text[:end] if end is not None else None) == piece
    assert FIRST_PIECE_WORDS == 4


def test_the_first_clause_is_spoken_before_the_reply_goes_on():
    voice = piper()
    chunks: list[AudioOut] = []
    writer = SpeechWriter(voice.sample_rate, 100, chunks.append)
    speaker = SentenceSpeaker(voice, "", writer)
    for delta in ["Sure", ",", " the", " capital"]:
        speaker.feed(delta)
    spoken_early = len(chunks)
    assert spoken_early > 0  # "Sure, " is already speech while the reply is being written
    for delta in [" of", " France", " is", " Paris", ".", " It", " is", " lovely", "."]:
        speaker.feed(delta)
    speaker.finish()
    assert len(chunks) > spoken_early
    seconds = sum(c.seconds for c in chunks)
    assert 1.0 < seconds < 8.0
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_a_long_first_sentence_starts_after_a_few_words():
    voice = piper()
    chunks: list[AudioOut] = []
    speaker = SentenceSpeaker(voice, "", SpeechWriter(voice.sample_rate, 100, chunks.append))
    words = ["The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "again"]
    for index, word in enumerate(words):
        speaker.feed(("" if index == 0 else " ") + word)
        if index < FIRST_PIECE_WORDS:
            assert not chunks  # the fourth word is not complete until the next space
    assert chunks
    speaker.finish()
