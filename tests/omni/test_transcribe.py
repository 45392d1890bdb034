"""Transcribe and StreamTranscribe through a real omni server with the real Whisper tiny.en:
the words of real speech (the Piper voice) come back with segment times where the speech is,
streamed segments equal the unary ones, silence gives no text (the VAD filter), WAV, FLAC, MP3
and raw PCM are read, a cancel stops the job, and each bad field is named."""

from __future__ import annotations

import asyncio
import io

import grpc
import numpy as np
import pytest
import soundfile

from mmserve.common.v1 import job_pb2, media_pb2
from mmserve.omni.v1 import omni_pb2, omni_pb2_grpc
from services.omni.audio import to_pcm16
from tests.omni.support import silence, speech, start_omni, wav, words
from tests.support.rpc import field_violations

FIRST = "The quick brown fox jumps over the lazy dog."
SECOND = "Please call me back tomorrow morning."
MAX_SECONDS = 45.0
GAP_SECONDS = 3.0


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_folder):
    process = start_omni(
        tmp_path_factory.mktemp("omni-transcribe"),
        ["--transcribe-max-seconds", str(MAX_SECONDS)],
    )
    yield process
    process.stop()


@pytest.fixture
async def stub(server):
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield omni_pb2_grpc.OmniServiceStub(channel)


def two_sentences() -> np.ndarray:
    """FIRST, GAP_SECONDS of silence, then SECOND (16 kHz)."""
    return np.concatenate([speech(FIRST), silence(GAP_SECONDS), speech(SECOND)])


def request(samples: np.ndarray | None = None, **fields) -> omni_pb2.TranscribeRequest:
    clip = two_sentences() if samples is None else samples
    return omni_pb2.TranscribeRequest(audio=media_pb2.Audio(data=wav(clip)), **fields)


async def test_words_and_segment_times(stub):
    clip = two_sentences()
    reply = await stub.Transcribe(request(clip), timeout=120)
    assert words(reply.text) == words(FIRST) + words(SECOND)
    assert reply.language == "en"
    assert reply.language_probability == 1.0
    assert reply.duration_seconds == pytest.approx(len(clip) / 16000, abs=1e-3)
    segments = list(reply.segments)
    assert [s.index for s in segments] == list(range(len(segments)))
    assert all(
        0 <= s.start_seconds < s.end_seconds <= reply.duration_seconds + 0.5 for s in segments
    )
    # The second sentence starts after the gap, in the clip's own time (not the VAD's).
    second_start = len(speech(FIRST)) / 16000 + GAP_SECONDS
    last = segments[-1]
    assert words(last.text)[-1] == words(SECOND)[-1]
    assert last.start_seconds == pytest.approx(second_start, abs=1.0)
    assert segments[0].start_seconds < 1.0
    assert all(s.tokens for s in segments)
    assert reply.usage.output_tokens == sum(len(s.tokens) for s in segments)
    assert reply.usage.run_seconds > 0


async def test_streamed_segments_equal_the_unary_ones(stub):
    unary = await stub.Transcribe(request(), timeout=120)
    events = [e async for e in stub.StreamTranscribe(request(), timeout=120)]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "accepted"
    assert kinds[-1] == "completed"
    assert kinds.index("started") < kinds.index("segment")
    started = next(e.started for e in events if e.HasField("started"))
    assert started.language == "en"
    assert started.duration_seconds == pytest.approx(unary.duration_seconds)
    streamed = [e.segment for e in events if e.HasField("segment")]
    assert streamed == list(unary.segments)
    completed = events[-1].completed
    assert completed.text == unary.text
    assert completed.segments == len(streamed)
    assert completed.usage.output_tokens == unary.usage.output_tokens


async def test_silence_gives_no_text(stub):
    reply = await stub.Transcribe(request(silence(4.0)), timeout=120)
    assert reply.text == ""
    assert list(reply.segments) == []
    info = await stub.GetModelInfo(omni_pb2.GetModelInfoRequest(), timeout=30)
    assert info.transcription.vad_filter
    assert list(info.transcription.languages) == ["en"]
    assert info.transcription.max_seconds == MAX_SECONDS
    assert info.transcription.engine == "whisper:tiny.en"
    assert "transcribe" in info.model_info.capabilities


@pytest.mark.parametrize("container", ["FLAC", "MP3", "OGG"])
async def test_encoded_containers(stub, container):
    clip = speech(FIRST)
    buffer = io.BytesIO()
    subtype = {"FLAC": "PCM_16", "MP3": "MPEG_LAYER_III", "OGG": "VORBIS"}[container]
    soundfile.write(buffer, clip, 16000, format=container, subtype=subtype)
    audio = media_pb2.Audio(data=buffer.getvalue())
    reply = await stub.Transcribe(omni_pb2.TranscribeRequest(audio=audio), timeout=120)
    assert words(reply.text) == words(FIRST)


async def test_raw_pcm_stereo_with_prompt_language_and_temperature(stub):
    clip = speech(FIRST)
    stereo = np.stack([clip, clip], axis=1)
    audio = media_pb2.Audio(
        data=to_pcm16(stereo.reshape(-1)),
        format=media_pb2.AUDIO_FORMAT_PCM_S16LE,
        sample_rate_hz=16000,
        channels=2,
    )
    reply = await stub.Transcribe(
        omni_pb2.TranscribeRequest(
            audio=audio, language="EN", prompt="A pangram about a fox.", temperature=0.2
        ),
        timeout=120,
    )
    assert words(reply.text) == words(FIRST)
    assert reply.language == "en"


async def test_each_bad_field_is_named(stub):
    pcm = media_pb2.Audio(data=b"\x00\x01" * 1600, format=media_pb2.AUDIO_FORMAT_PCM_S16LE)
    too_long = silence(MAX_SECONDS + 1)
    cases = [
        (omni_pb2.TranscribeRequest(), ["audio"]),
        (omni_pb2.TranscribeRequest(audio=media_pb2.Audio(data=b"")), ["audio.data"]),
        (
            omni_pb2.TranscribeRequest(audio=media_pb2.Audio(data=b"not audio at all")),
            ["audio.data"],
        ),
        (
            omni_pb2.TranscribeRequest(audio=media_pb2.Audio(data=b"RIFF\x10\x00\x00\x00WAVEjunk")),
            ["audio.data"],
        ),
        (omni_pb2.TranscribeRequest(audio=pcm), ["audio.sample_rate_hz"]),
        (request(too_long), ["audio"]),
        (request(silence(1.0), language="fr"), ["language"]),
        (request(silence(1.0), language="klingon"), ["language"]),
        (request(silence(1.0), temperature=1.5), ["temperature"]),
        (request(silence(1.0), prompt="x" * 1001), ["prompt"]),
        (
            omni_pb2.TranscribeRequest(language="fr", temperature=-1),
            ["audio", "language", "temperature"],
        ),
    ]
    for bad, fields in cases:
        for call in (stub.Transcribe(bad, timeout=60), _drain(stub.StreamTranscribe(bad))):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
            assert field_violations(caught.value) == fields
    # The service keeps serving.
    assert words((await stub.Transcribe(request(), timeout=120)).text)


async def _drain(call) -> None:
    async for _ in call:
        pass


async def test_cancel_stops_between_segments(server, stub):
    # Ten sentences with pauses: many segments, so a cancel after the first lands mid-job.
    parts = []
    for _ in range(10):
        parts += [speech(FIRST), silence(1.0)]
    clip = np.concatenate(parts)
    events: list[omni_pb2.StreamTranscribeResponse] = []
    async with grpc.aio.insecure_channel(server.target) as channel:
        other = omni_pb2_grpc.OmniServiceStub(channel)

        async def listen() -> None:
            async for event in stub.StreamTranscribe(request(clip), timeout=300):
                events.append(event)
                if event.HasField("segment") and event.segment.index == 0:
                    job_id = events[0].accepted.job_id
                    reply = await other.CancelJob(job_pb2.CancelJobRequest(job_id=job_id))
                    assert reply.job.state == job_pb2.JOB_STATE_CANCELLED
                    assert reply.job.kind == "transcribe"

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(listen(), timeout=240)
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    segments = [e for e in events if e.HasField("segment")]
    assert 1 <= len(segments) < 10
    assert events[-1].HasField("completed")
    assert events[-1].completed.segments == len(segments)
