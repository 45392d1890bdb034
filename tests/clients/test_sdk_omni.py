"""The omni clients against the real omni service (SmolLM2 with Whisper ASR and the Piper voice,
all shipped in PyPI packages): text, streamed speech as int16 numpy chunks, speech in (the
service's own speech fed back), live sessions, reference voices, and plain speech (synthesize
and transcribe, no chat model)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from mmserve_client import (
    Accepted,
    AudioChunk,
    AudioClip,
    Completed,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OmniClient,
    SamplingOptions,
    SessionState,
    SessionStateChanged,
    TextDelta,
    TurnCompleted,
    aio,
)
from mmserve_client.speech import (
    SegmentDone,
    SpeechCompleted,
    SpeechPiece,
    SpeechStarted,
    TranscriptionCompleted,
    TranscriptionStarted,
)
from tests.clients.servers import Served

SHORT: SamplingOptions = {"max_new_tokens": 6, "temperature": 0.0}


@pytest.fixture
def omni(omni_server: Served):
    with OmniClient(omni_server.target, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def spoken(omni_server: Served) -> AudioClip:
    """Some real speech: the service's own spoken reply."""
    with OmniClient(omni_server.target, timeout=120) as client:
        reply = client.chat("Say: the weather is nice today.", speech=True, max_new_tokens=12)
    assert reply.audio is not None
    return reply.audio


def test_text_chat(omni: OmniClient) -> None:
    reply = omni.chat("What is the capital of France?", system="Answer briefly.", **SHORT)
    assert reply.text.strip()
    assert reply.audio is None
    assert reply.usage.output_tokens <= 6


def test_stream_with_speech_gives_text_and_int16_chunks(omni: OmniClient) -> None:
    with omni.stream_chat("Say hello.", speech=True, chunk_ms=100, **SHORT) as stream:
        events = list(stream)
    assert isinstance(events[0], Accepted)
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    assert chunks
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(c.audio.samples.dtype == np.int16 for c in chunks)
    rate = chunks[0].audio.sample_rate
    assert rate > 0
    assert all(len(c.audio.samples) <= rate // 10 for c in chunks)  # 100 ms chunks
    done = events[-1]
    assert isinstance(done, Completed)
    assert stream.audio is not None
    assert stream.audio.duration == pytest.approx(done.audio_seconds, abs=0.01)
    assert stream.text == "".join(e.text for e in events if isinstance(e, TextDelta))


def test_unary_speech_is_a_wav_decoded_to_samples(spoken: AudioClip) -> None:
    assert spoken.samples.dtype == np.int16
    assert spoken.duration > 0.5
    assert np.abs(spoken.samples).max() > 1000  # speech, not silence
    wav = spoken.to_wav()
    assert wav[:4] == b"RIFF"


def test_speech_input_from_samples(omni: OmniClient, spoken: AudioClip) -> None:
    reply = omni.chat("Answer the question in the audio.", audio=[spoken], **SHORT)
    assert reply.text.strip()
    assert reply.usage.input_tokens > 0


def test_live_session_turn(omni: OmniClient) -> None:
    session = omni.open_session(mode="chat", system_prompt="Be brief.", **SHORT)
    try:
        _live_turn(omni, session.session_id)
    finally:
        # A session holds the device while open: one left behind by a failed assertion
        # would starve every later test of this server.
        with contextlib.suppress(NotFound, FailedPrecondition):
            omni.close_session(session.session_id)
    with pytest.raises((NotFound, FailedPrecondition)):  # closed, or already forgotten
        omni.push(session.session_id, 1, text="gone")


def _live_turn(omni: OmniClient, session_id: str) -> None:
    with omni.session_events(session_id, timeout=120) as events:
        first = next(events)
        assert isinstance(first.event, SessionStateChanged)
        assert first.event.state is SessionState.LISTENING
        ack = omni.push(session_id, 0, text="Hello!", end_of_turn=True)
        assert ack.acked_sequence == 0
        assert omni.push(session_id, 0, text="Hello!").acked_sequence == 0  # a retry
        text = []
        for item in events:
            if isinstance(item.event, TextDelta):
                text.append(item.event.text)
            if isinstance(item.event, TurnCompleted):
                assert item.event.turn == 0
                break
        assert "".join(text).strip()
        assert omni.pause_session(session_id) is SessionState.PAUSED
        assert omni.resume_session(session_id) is SessionState.LISTENING
        closed = omni.close_session(session_id)
        assert closed.turns == 1
        rest = list(events)  # the stream ends once the session is closed
    assert all(not isinstance(e.event, TextDelta) for e in rest)


def test_voices_register_list_delete(omni: OmniClient, spoken: AudioClip) -> None:
    builtin = omni.list_voices()
    assert builtin
    assert not builtin[0].registered
    long_enough = AudioClip.concatenate([spoken] * max(1, int(4 / spoken.duration) + 1))
    voice = omni.register_voice("tester", long_enough)
    assert voice.registered
    assert voice.voice_id.startswith("voice-")
    assert voice.voice_id in [v.voice_id for v in omni.list_voices()]
    omni.delete_voice(voice.voice_id)
    assert voice.voice_id not in [v.voice_id for v in omni.list_voices()]
    with pytest.raises(FailedPrecondition):
        omni.delete_voice(builtin[0].voice_id)


async def test_async_stream_with_speech(omni_server: Served) -> None:
    async with aio.OmniClient(omni_server.target, timeout=120) as client:
        stream = client.stream_chat("Say yes.", speech=True, **SHORT)
        events = [event async for event in stream]
        assert isinstance(events[-1], Completed)
        assert stream.audio is not None
        assert stream.audio.duration > 0
        assert (await client.info()).extras["supports_speech_output"] is True


# --- plain speech: synthesize and transcribe ---

PHRASE = "Hello there, this is a test of the speech."


def words(text: str) -> list[str]:
    return "".join(c.lower() if c.isalnum() or c.isspace() else " " for c in text).split()


def test_synthesize_then_transcribe_gives_the_words_back(omni: OmniClient) -> None:
    speech = omni.synthesize(PHRASE, format="mp3")
    assert speech.format == "mp3"
    assert speech.media_type == "audio/mpeg"
    assert speech.voice
    assert speech.job_id
    clip = speech.clip()
    assert clip.duration == pytest.approx(speech.seconds, abs=0.1)
    heard = omni.transcribe(speech.data)  # encoded bytes: the format is sniffed
    assert words(heard.text) == words(PHRASE)
    assert heard.language == "en"
    assert heard.segments
    assert heard.segments[0].start < heard.segments[-1].end <= heard.duration + 0.5
    info = omni.info().extras
    assert info["supports_synthesize"] is True
    assert info["supports_transcribe"] is True


def test_streams_of_speech_and_of_segments(omni: OmniClient) -> None:
    with omni.stream_synthesize(PHRASE, format="pcm", sample_rate=16000, chunk_ms=100) as stream:
        events = list(stream)
    assert isinstance(events[0], Accepted)
    started = next(e for e in events if isinstance(e, SpeechStarted))
    assert (started.format, started.sample_rate) == ("pcm", 16000)
    pieces = [e for e in events if isinstance(e, SpeechPiece)]
    assert [p.index for p in pieces] == list(range(len(pieces)))
    done = events[-1]
    assert isinstance(done, SpeechCompleted)
    pcm = b"".join(p.data for p in pieces)
    assert len(pcm) / 2 / 16000 == pytest.approx(done.seconds, abs=1e-3)
    samples = np.frombuffer(pcm, dtype="<i2")
    with omni.stream_transcribe((samples, 16000)) as heard:
        transcribed = list(heard)
    assert isinstance(transcribed[0], Accepted)
    assert isinstance(transcribed[1], TranscriptionStarted)
    segments = [e.segment for e in transcribed if isinstance(e, SegmentDone)]
    assert segments
    last = transcribed[-1]
    assert isinstance(last, TranscriptionCompleted)
    assert words(last.text) == words(PHRASE)
    assert last.segments == len(segments)


def test_speech_errors_name_the_field(omni: OmniClient) -> None:
    with pytest.raises(InvalidArgument) as caught:
        omni.synthesize(PHRASE, voice="no-such-voice", speed=10)
    assert [v.field for v in caught.value.field_violations] == ["voice", "speed"]
    with pytest.raises(InvalidArgument) as caught:
        omni.synthesize(PHRASE, format="aac")
    assert [v.field for v in caught.value.field_violations] == ["format"]
    with pytest.raises(InvalidArgument) as caught:
        omni.transcribe(b"RIFF\x00\x00\x00\x00WAVEbroken")
    assert [v.field for v in caught.value.field_violations] == ["audio.data"]
    with pytest.raises(ValueError, match="unknown speech format"):
        omni.synthesize(PHRASE, format="ogg-vorbis")
