"""The listening side of sessions on its own, with the real Silero VAD and Piper speech: when a
user turn is complete, what happens to speech heard while the model answers (dropped in half
duplex, a barge-in in duplex), and text turns in CHAT mode."""

from __future__ import annotations

import numpy as np
import pytest

from services.omni.session_listener import (
    BargeIn,
    Listener,
    SpeechPaused,
    SpeechResumed,
    TurnReady,
    VadNote,
)
from services.omni.session_runner import AudioIn, Mode, TextIn
from services.omni.vad import SileroModel, VadConfig, VoiceActivityDetector
from tests.omni.support import silence, speech


@pytest.fixture(scope="module")
def silero() -> SileroModel:
    return SileroModel()


def listener(silero: SileroModel, mode: Mode) -> Listener:
    vad = VoiceActivityDetector(silero, VadConfig(min_silence_ms=500))
    return Listener(mode, vad, max_images=2)


def feed(target: Listener, samples: np.ndarray) -> list:
    actions = []
    for start in range(0, len(samples), 1600):  # 100 ms chunks, as a client pushes them
        actions += target.feed(AudioIn(samples[start : start + 1600]), False)
    return actions


def spoken(text: str) -> np.ndarray:
    return np.concatenate([silence(0.3), speech(text), silence(0.8)])


def test_half_duplex_turn_then_speech_while_replying_is_dropped(silero):
    ears = listener(silero, Mode.HALF_DUPLEX)
    actions = feed(ears, spoken("What is the capital of France?"))
    assert [type(a) for a in actions] == [VadNote, SpeechPaused, VadNote, TurnReady]
    assert [actions[0].reason, actions[2].reason] == ["vad: speech started", "vad: speech ended"]
    turn = actions[3].user
    assert turn.audio is not None
    # Known before the silence window ran out: exactly the audio of the turn.
    assert np.array_equal(actions[1].audio, turn.audio)
    assert len(turn.audio) / 16000 > 1.0
    assert ears.replying
    # The model "speaks": what the user says meanwhile is not heard.
    assert feed(ears, spoken("And of Germany?")) == []
    assert ears.reply_ended() == []
    assert not ears.replying
    again = feed(ears, spoken("And of Germany?"))
    assert isinstance(again[-1], TurnReady)


def test_duplex_speech_while_replying_barges_in_and_becomes_the_next_turn(silero):
    ears = listener(silero, Mode.AUDIO_DUPLEX)
    first = feed(ears, spoken("Tell me a story."))
    assert isinstance(first[-1], TurnReady)
    during = feed(ears, spoken("Stop, what is the capital of France?"))
    assert during == [BargeIn()]  # once per reply; the rest waits for the reply to end
    after = ears.reply_ended()
    assert [type(a) for a in after] == [VadNote, TurnReady]
    assert after[0].reason == "vad: speech ended"


def test_chat_mode_gathers_until_end_of_turn(silero):
    ears = Listener(Mode.CHAT, None, max_images=2)
    assert ears.feed(TextIn("Hello"), False) == []
    assert ears.feed(AudioIn(silence(0.2)), False) == []
    (ready,) = ears.feed(TextIn("there"), True)
    assert isinstance(ready, TurnReady)
    assert ready.user.texts == ("Hello", "there")
    assert ready.user.audio is not None
    # Input during the reply gathers for the next turn, which is ready at its own end_of_turn.
    (queued,) = ears.feed(TextIn("Next"), True)
    assert isinstance(queued, TurnReady)
    assert ears.feed(None, True) == []  # an empty turn is no turn


def test_a_short_pause_mid_question_is_paused_then_resumed(silero):
    ears = listener(silero, Mode.HALF_DUPLEX)
    question = [speech("What is the capital"), silence(0.3), speech("of France?")]
    actions = feed(ears, np.concatenate([silence(0.3), *question, silence(0.8)]))
    kinds = [type(a) for a in actions]
    assert kinds == [VadNote, SpeechPaused, SpeechResumed, SpeechPaused, VadNote, TurnReady]
    turn = actions[-1].user
    # The first pause's audio is not the turn's; the last one's is, to the sample.
    assert len(actions[1].audio) < len(turn.audio)
    assert np.array_equal(actions[3].audio, turn.audio)


def test_no_early_pause_without_a_pad_shorter_than_the_silence_window(silero):
    for pad_ms in (0, 500):
        vad = VoiceActivityDetector(silero, VadConfig(min_silence_ms=500, pad_ms=pad_ms))
        actions = feed(Listener(Mode.HALF_DUPLEX, vad, max_images=2), spoken("Why is it blue?"))
        assert [type(a) for a in actions] == [VadNote, VadNote, TurnReady]
