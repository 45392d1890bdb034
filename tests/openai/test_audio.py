"""Speech and transcription through /v1/audio, and spoken chat replies, with the official
client against the real omni service (its TTS voice and its Whisper recognizer)."""

from __future__ import annotations

import base64
import json
import re

import openai
import pytest
from openai import OpenAI

TEXT = "Hello there, this is a test of the speech."


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


@pytest.fixture(scope="module")
def spoken(openai_stack: object) -> bytes:
    from tests.openai.conftest import client_for

    with client_for(openai_stack) as client:  # type: ignore[arg-type]
        reply = client.audio.speech.create(
            model="tts-1", voice="alloy", input=TEXT, response_format="wav"
        )
        return reply.content


def test_speech_is_a_wav_of_the_text(spoken: bytes) -> None:
    assert spoken[:4] == b"RIFF"
    assert spoken[8:12] == b"WAVE"
    assert len(spoken) > 10_000


def test_speech_streams_bytes_and_sse(client: OpenAI) -> None:
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input="Streaming speech.", response_format="pcm"
    ) as reply:
        assert reply.headers["content-type"].startswith("audio/pcm")
        pieces = list(reply.iter_bytes())
    assert sum(len(p) for p in pieces) > 1000
    # The SDK hands speech back as bytes whatever stream_format says: read the events raw.
    reply = client.audio.speech.with_raw_response.create(
        model="tts-1", voice="alloy", input="Hi.", response_format="wav", stream_format="sse"
    )
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = [
        json.loads(line[len("data: ") :])
        for line in reply.http_response.text.splitlines()
        if line.startswith("data: ")
    ]
    assert events[-1]["type"] == "speech.audio.done"
    audio = b"".join(
        base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta"
    )
    assert audio[:4] == b"RIFF"


def test_transcription_round_trip(client: OpenAI, spoken: bytes) -> None:
    text = client.audio.transcriptions.create(
        model="whisper-1", file=("speech.wav", spoken, "audio/wav")
    ).text
    heard = _words(text)
    assert {"hello", "test", "speech"} <= heard, text


def test_transcription_formats(client: OpenAI, spoken: bytes) -> None:
    verbose = client.audio.transcriptions.create(
        model="whisper-1",
        file=("speech.wav", spoken, "audio/wav"),
        response_format="verbose_json",
        language="en",
    )
    assert verbose.segments
    assert verbose.duration > 1
    assert verbose.segments[0].start < verbose.segments[-1].end <= verbose.duration + 0.5
    srt = client.audio.transcriptions.create(
        model="whisper-1", file=("speech.wav", spoken, "audio/wav"), response_format="srt"
    )
    assert "-->" in str(srt)
    plain = client.audio.transcriptions.create(
        model="whisper-1", file=("speech.wav", spoken, "audio/wav"), response_format="text"
    )
    assert "hello" in str(plain).lower()
    events = list(
        client.audio.transcriptions.create(
            model="whisper-1", file=("speech.wav", spoken, "audio/wav"), stream=True
        )
    )
    assert events[-1].type == "transcript.text.done"
    assert "hello" in events[-1].text.lower()  # type: ignore[union-attr]
    assert any(e.type == "transcript.text.delta" for e in events)


def test_transcription_errors(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.audio.transcriptions.create(
            model="whisper-1", file=("noise.wav", b"not audio at all", "audio/wav")
        )
    assert bad.value.body["param"] == "file"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.audio.transcriptions.create(model="vl", file=("a.wav", b"x", "audio/wav"))


def test_chat_reply_as_speech(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model="omni",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=5,
    )
    audio = reply.choices[0].message.audio
    assert audio is not None
    assert base64.b64decode(audio.data)[:4] == b"RIFF"
    assert isinstance(audio.transcript, str)
    chunks = list(
        client.chat.completions.create(
            model="omni",
            modalities=["text", "audio"],
            audio={"voice": "alloy", "format": "pcm16"},
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=5,
            stream=True,
        )
    )
    deltas = [c.choices[0].delta.audio for c in chunks if c.choices]
    data = [a.data for a in deltas if a is not None and a.data]
    assert data
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
