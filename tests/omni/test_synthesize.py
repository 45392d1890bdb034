"""Synthesize and StreamSynthesize through a real omni server with the real Piper voice and
Whisper tiny.en: the exact text comes back when the speech is transcribed, streamed pieces
join into the unary file, every format decodes, speed and sample rate are honoured, a cancel or
deadline stops the job, and each bad field is named."""

from __future__ import annotations

import asyncio
import io

import grpc
import numpy as np
import pytest
import soundfile

from mmserve.common.v1 import job_pb2, media_pb2
from mmserve.omni.v1 import omni_pb2, omni_pb2_grpc
from services.omni.speech_encoding import streaming_wav_header
from tests.omni.support import start_omni, words
from tests.support.rpc import field_violations

PHRASE = "Hello there, this is a test of the speech."
MAX_CHARS = 3000
# Many sentences: long enough that a cancel or a short deadline lands mid-speech.
LONG_TEXT = " ".join(f"This is sentence number {n} of a rather long story." for n in range(50))


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_folder):
    process = start_omni(
        tmp_path_factory.mktemp("omni-synthesize"),
        ["--synthesize-max-chars", str(MAX_CHARS)],
    )
    yield process
    process.stop()


@pytest.fixture
async def stub(server):
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield omni_pb2_grpc.OmniServiceStub(channel)


def request(text: str = PHRASE, **fields) -> omni_pb2.SynthesizeRequest:
    return omni_pb2.SynthesizeRequest(text=text, **fields)


async def heard(stub, audio: media_pb2.Audio) -> list[str]:
    reply = await stub.Transcribe(omni_pb2.TranscribeRequest(audio=audio), timeout=120)
    return words(reply.text)


def decode(data: bytes) -> tuple[np.ndarray, int]:
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    return samples, rate


async def test_speaks_exactly_the_text_and_whisper_hears_it(stub):
    reply = await stub.Synthesize(request(), timeout=120)
    assert reply.format == omni_pb2.SPEECH_FORMAT_WAV
    assert reply.media_type == "audio/wav"
    assert reply.audio.format == media_pb2.AUDIO_FORMAT_WAV
    assert reply.audio.sample_rate_hz == 22050
    assert reply.voice == "joe"
    samples, rate = decode(reply.audio.data)
    assert rate == 22050
    assert reply.audio_seconds == pytest.approx(len(samples) / rate, abs=1e-3)
    assert 1.0 < reply.audio_seconds < 6.0
    assert reply.usage.run_seconds > 0
    # Verbatim: the chat model is not involved, so no word is dropped or added.
    assert await heard(stub, reply.audio) == words(PHRASE)


async def test_model_info_states_what_synthesize_offers(stub):
    info = await stub.GetModelInfo(omni_pb2.GetModelInfoRequest(), timeout=30)
    assert info.supports_synthesize
    assert info.supports_transcribe
    synthesis = info.synthesis
    assert list(synthesis.voices) == ["joe"]
    assert synthesis.default_voice == "joe"
    assert synthesis.sample_rate_hz == 22050
    assert synthesis.supports_speed
    assert synthesis.max_chars == MAX_CHARS
    assert synthesis.engine.startswith("piper:")
    assert omni_pb2.SPEECH_FORMAT_WAV in synthesis.formats
    assert omni_pb2.SPEECH_FORMAT_PCM_S16LE in synthesis.formats
    assert omni_pb2.SPEECH_FORMAT_AAC not in synthesis.formats
    assert "synthesize" in info.model_info.capabilities


async def test_streamed_pcm_pieces_join_into_the_unary_pcm(stub):
    unary = await stub.Synthesize(request(format=omni_pb2.SPEECH_FORMAT_PCM_S16LE), timeout=120)
    assert unary.audio.format == media_pb2.AUDIO_FORMAT_PCM_S16LE
    events = [
        event
        async for event in stub.StreamSynthesize(
            request(format=omni_pb2.SPEECH_FORMAT_PCM_S16LE, chunk_ms=100), timeout=120
        )
    ]
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[0] == "accepted"
    assert kinds[-1] == "completed"
    assert kinds.index("started") < kinds.index("audio")
    started = next(e.started for e in events if e.HasField("started"))
    assert (started.sample_rate_hz, started.voice) == (22050, "joe")
    assert started.format == omni_pb2.SPEECH_FORMAT_PCM_S16LE
    pieces = [e.audio for e in events if e.HasField("audio")]
    assert [p.index for p in pieces] == list(range(len(pieces)))
    # Every piece but the last is exactly 100 ms (2205 samples of 2 bytes).
    assert {len(p.data) for p in pieces[:-1]} == {2205 * 2}
    ends = [p.end_seconds for p in pieces]
    assert ends == sorted(ends)
    # The noise-free voice is repeatable: the stream is the unary audio, byte for byte.
    assert b"".join(p.data for p in pieces) == unary.audio.data
    completed = events[-1].completed
    assert completed.chunks == len(pieces)
    assert completed.audio_seconds == pytest.approx(unary.audio_seconds, abs=1e-6)
    assert ends[-1] == pytest.approx(completed.audio_seconds, abs=1e-6)
    assert all(e.job_id == events[0].accepted.job_id for e in events)


async def test_streamed_wav_is_a_header_then_the_unary_samples(stub):
    unary = await stub.Synthesize(request(), timeout=120)
    pieces = [
        e.audio.data
        async for e in stub.StreamSynthesize(request(format=omni_pb2.SPEECH_FORMAT_WAV))
        if e.HasField("audio")
    ]
    streamed = b"".join(pieces)
    header = streaming_wav_header(22050)
    assert streamed.startswith(header)
    assert streamed[len(header) :] == unary.audio.data[44:]


@pytest.mark.parametrize(
    ("fmt", "media_type", "rate"),
    [
        (omni_pb2.SPEECH_FORMAT_MP3, "audio/mpeg", 22050),
        (omni_pb2.SPEECH_FORMAT_OPUS, "audio/ogg", 24000),
        (omni_pb2.SPEECH_FORMAT_FLAC, "audio/flac", 22050),
    ],
)
async def test_compressed_formats_decode_and_stream(stub, fmt, media_type, rate):
    reference = await stub.Synthesize(request(), timeout=120)
    unary = await stub.Synthesize(request(format=fmt), timeout=120)
    assert unary.media_type == media_type
    assert unary.audio.sample_rate_hz == rate
    samples, decoded_rate = decode(unary.audio.data)
    assert decoded_rate == rate
    assert len(samples) / rate == pytest.approx(reference.audio_seconds, abs=0.1)
    # The server's own decoder takes the file back: the words survive the codec.
    assert await heard(stub, unary.audio) == words(PHRASE)
    events = [e async for e in stub.StreamSynthesize(request(format=fmt), timeout=120)]
    streamed = b"".join(e.audio.data for e in events if e.HasField("audio"))
    again, _ = decode(streamed)
    # A stream may carry a leading info frame (MP3) but holds the same speech.
    assert len(again) / rate == pytest.approx(len(samples) / rate, abs=0.15)


async def test_speed_and_sample_rate(stub):
    normal = await stub.Synthesize(request(), timeout=120)
    fast = await stub.Synthesize(request(speed=2.0), timeout=120)
    slow = await stub.Synthesize(request(speed=0.5), timeout=120)
    assert fast.audio_seconds < 0.7 * normal.audio_seconds
    assert slow.audio_seconds > 1.5 * normal.audio_seconds
    resampled = await stub.Synthesize(
        request(sample_rate_hz=16000, format=omni_pb2.SPEECH_FORMAT_PCM_S16LE), timeout=120
    )
    assert resampled.audio.sample_rate_hz == 16000
    assert len(resampled.audio.data) / 2 / 16000 == pytest.approx(normal.audio_seconds, abs=0.01)
    assert await heard(stub, resampled.audio) == words(PHRASE)


async def test_each_bad_field_is_named(stub):
    cases = [
        (request(""), ["text"]),
        (request("   \n "), ["text"]),
        (request("a" * (MAX_CHARS + 1)), ["text"]),
        (request(voice="alloy"), ["voice"]),
        (request(format=omni_pb2.SPEECH_FORMAT_AAC), ["format"]),
        (request(format=99), ["format"]),
        (request(speed=5.0), ["speed"]),
        (request(speed=0.1), ["speed"]),
        (request(sample_rate_hz=4000), ["sample_rate_hz"]),
        (request(chunk_ms=10), ["chunk_ms"]),
        (request("", voice="nobody", speed=9.0), ["text", "voice", "speed"]),
    ]
    for bad, fields in cases:
        for call in (stub.Synthesize(bad, timeout=30), _drain(stub.StreamSynthesize(bad))):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
            assert field_violations(caught.value) == fields
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Synthesize(request(format=omni_pb2.SPEECH_FORMAT_AAC), timeout=30)
    assert "AAC cannot be encoded" in (caught.value.details() or "")
    # Found only when the voice runs: punctuation alone makes no sound.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Synthesize(request("..."), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["text"]
    # The service keeps serving.
    assert (await stub.Synthesize(request("Still here."), timeout=60)).audio_seconds > 0


async def _drain(call) -> None:
    async for _ in call:
        pass


async def test_cancel_stops_the_voice_mid_speech(server, stub):
    events: list[omni_pb2.StreamSynthesizeResponse] = []
    async with grpc.aio.insecure_channel(server.target) as channel:
        other = omni_pb2_grpc.OmniServiceStub(channel)

        async def listen() -> None:
            async for event in stub.StreamSynthesize(request(LONG_TEXT, chunk_ms=50)):
                events.append(event)
                if event.HasField("audio") and event.audio.index == 0:
                    job_id = events[0].accepted.job_id
                    reply = await other.CancelJob(job_pb2.CancelJobRequest(job_id=job_id))
                    assert reply.job.state == job_pb2.JOB_STATE_CANCELLED
                    assert reply.job.kind == "synthesize"

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(listen(), timeout=120)
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    assert events[-1].HasField("completed")
    sent = events[-1].completed.audio_seconds
    full = len(LONG_TEXT.split(".")) * 2.0  # each sentence is a couple of seconds of speech
    assert 0 < sent < full / 4
    # The device is free at once.
    reply = await stub.Synthesize(request("Next."), timeout=60)
    assert reply.usage.queue_seconds < 10


async def test_deadline_ends_a_long_synthesis(stub):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Synthesize(request(LONG_TEXT), timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (await stub.Synthesize(request("Fine."), timeout=60)).audio_seconds > 0


async def test_a_queued_synthesis_reports_its_place(stub):
    first = stub.StreamSynthesize(request(LONG_TEXT, chunk_ms=50), timeout=120)
    while not (await first.read()).HasField("audio"):
        pass  # the first job is on the device now
    second = stub.StreamSynthesize(request("Queued."), timeout=120)
    accepted = await second.read()
    assert accepted.accepted.queue.position == 1  # next in line behind the running job
    assert accepted.accepted.queue.queue_length == 1
    first.cancel()
    rest = []
    while (event := await second.read()) is not grpc.aio.EOF:
        rest.append(event)
    assert rest[-1].HasField("completed")
    assert rest[-1].completed.usage.queue_seconds > 0


@pytest.mark.timeout(900)  # a Qwen-Omni warm-up on two shared cores
def test_native_speech_model_serves_plain_speech_with_standalone_speech(tmp_path, monkeypatch):
    """Qwen2.5-Omni hears and speaks itself; standalone_speech adds Whisper and Piper for
    Synthesize and Transcribe, which never touch the (random-weight) omni model."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny torch models: one thread is fastest
    args = ["--model", "builtin:tiny-qwen2.5-omni", "--talker-max-new-tokens", "20"]
    process = start_omni(tmp_path, [*args, "--standalone-speech"], timeout=800)
    try:
        with grpc.insecure_channel(process.target) as channel:
            native = omni_pb2_grpc.OmniServiceStub(channel)
            info = native.GetModelInfo(omni_pb2.GetModelInfoRequest(), timeout=30)
            assert info.supports_synthesize
            assert info.supports_transcribe
            assert list(info.synthesis.voices) == ["joe"]
            reply = native.Synthesize(request(), timeout=120)
            heard = native.Transcribe(omni_pb2.TranscribeRequest(audio=reply.audio), timeout=120)
            assert words(heard.text) == words(PHRASE)
    finally:
        process.stop()


def test_without_voice_and_recognizer_the_calls_are_unimplemented(tmp_path):
    process = start_omni(tmp_path, ["--tts-model", "none", "--asr-model", "none"])
    try:
        with grpc.insecure_channel(process.target) as channel:
            bare = omni_pb2_grpc.OmniServiceStub(channel)
            info = bare.GetModelInfo(omni_pb2.GetModelInfoRequest(), timeout=30)
            assert not info.supports_synthesize
            assert not info.supports_transcribe
            assert not info.HasField("synthesis")
            assert not info.HasField("transcription")
            with pytest.raises(grpc.RpcError) as caught:
                bare.Synthesize(request(), timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "tts_model" in caught.value.details()
            audio = media_pb2.Audio(data=b"RIFF")
            with pytest.raises(grpc.RpcError) as caught:
                bare.Transcribe(omni_pb2.TranscribeRequest(audio=audio), timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        process.stop()
