"""Chat and StreamChat through a real server with the real SmolLM2-135M-Instruct, Whisper tiny.en
and the Piper voice: greedy text equals in-process generation, spoken questions are understood,
speech streams as PCM chunks of the stated size and rate, bad input gets the right codes."""

from __future__ import annotations

import asyncio
import io
import wave
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from mmserve.common.v1 import chat_pb2, job_pb2, media_pb2
from mmserve.omni.v1 import omni_pb2, omni_pb2_grpc
from services.omni.speech import SentenceSpeaker, SpeechWriter
from services.omni.turns import AudioOut
from services.runtime.devices import checkpoint_dtype, resolve_dtype
from tests.omni.support import (
    audio_part,
    piper,
    silence,
    speech,
    start_omni,
    text_part,
    user,
    wav,
)
from tests.support.rpc import field_violations

QUESTION = "What is the capital of France?"
# Far more tokens than a cancel needs to arrive in: a job that kept running would show it.
LONG_TOKENS = 400


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_folder):
    process = start_omni(tmp_path_factory.mktemp("omni-chat"))
    yield process
    process.stop()


@pytest.fixture
async def stub(server):
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield omni_pb2_grpc.OmniServiceStub(channel)


def chat_request(*parts, max_new_tokens=24, speech_on=False, chunk_ms=0, **sampling):
    return omni_pb2.ChatRequest(
        messages=[user(*parts)],
        sampling=chat_pb2.SamplingParams(max_new_tokens=max_new_tokens, **sampling),
        speech=omni_pb2.SpeechOptions(enabled=speech_on, chunk_ms=chunk_ms),
    )


def in_process_greedy(folder, question: str, max_new_tokens: int) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # The dtype the server's `auto` picks for this checkpoint on this CPU (bf16 where the CPU
    # has bf16 instructions, as the model card's recipe loads it; else fp32).
    dtype = resolve_dtype("auto", torch.device("cpu"), checkpoint_dtype(Path(folder)))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


async def test_served_greedy_text_equals_in_process_and_stream_matches(stub, smollm2_folder):
    question = "Name three colors of the rainbow."
    reply = await stub.Chat(chat_request(text_part(question), max_new_tokens=20), timeout=120)
    expected = in_process_greedy(smollm2_folder, question, 20)
    assert reply.text == expected
    assert reply.finish_reason in (chat_pb2.FINISH_REASON_STOP, chat_pb2.FINISH_REASON_LENGTH)
    assert 0 < reply.usage.output_tokens <= 20
    assert reply.usage.total_tokens == reply.usage.input_tokens + reply.usage.output_tokens
    assert not reply.HasField("audio")

    events = [
        e async for e in stub.StreamChat(chat_request(text_part(question), max_new_tokens=20))
    ]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "accepted"
    assert kinds[-1] == "completed"
    deltas = [e.delta for e in events if e.WhichOneof("event") == "delta"]
    assert "".join(d.text for d in deltas) == expected
    assert [d.output_tokens for d in deltas] == sorted(d.output_tokens for d in deltas)
    assert events[-1].completed.usage.output_tokens == reply.usage.output_tokens
    assert {e.job_id for e in events} == {events[0].accepted.job_id}


async def test_stop_string_cuts_the_reply(stub):
    reply = await stub.Chat(chat_request(text_part(QUESTION), stop=["Paris"]), timeout=120)
    assert "Paris" not in reply.text
    assert reply.text.startswith("The capital of France is")
    assert reply.finish_reason == chat_pb2.FINISH_REASON_STOP


async def test_spoken_question_is_heard_and_answered(stub):
    spoken = wav(np.concatenate([silence(0.3), speech(QUESTION), silence(0.3)]))
    reply = await stub.Chat(chat_request(audio_part(spoken)), timeout=120)
    assert "Paris" in reply.text
    # The same words typed give the same greedy answer: the transcript was exact.
    typed = await stub.Chat(chat_request(text_part(QUESTION)), timeout=120)
    assert reply.text == typed.text


async def test_speech_stream_is_pcm_of_the_stated_rate_and_size(stub):
    request = chat_request(text_part(QUESTION), speech_on=True, chunk_ms=100)
    events = [e async for e in stub.StreamChat(request, timeout=120)]
    chunks = [e.audio for e in events if e.WhichOneof("event") == "audio"]
    completed = events[-1].completed
    rate = piper().sample_rate
    assert chunks
    assert all(c.audio.format == media_pb2.AUDIO_FORMAT_PCM_S16LE for c in chunks)
    assert {c.audio.sample_rate_hz for c in chunks} == {rate}
    assert [c.index for c in chunks] == list(range(len(chunks)))
    size = rate * 100 // 1000 * 2
    assert all(len(c.audio.data) == size for c in chunks[:-1])
    assert 0 < len(chunks[-1].audio.data) <= size
    pcm = b"".join(c.audio.data for c in chunks)
    assert completed.audio_seconds == pytest.approx(len(pcm) / 2 / rate)
    # The reply's speech is what the same voice makes in-process from the same text deltas,
    # cut into pieces the same way (the first clause early, then whole sentences).
    local: list[AudioOut] = []
    speaker = SentenceSpeaker(piper(), "", SpeechWriter(rate, 100, local.append))
    for e in events:
        if e.WhichOneof("event") == "delta":
            speaker.feed(e.delta.text)
    speaker.finish()
    assert len(pcm) == sum(len(c.pcm) for c in local)
    # Text comes before the audio of its sentence.
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds.index("delta") < kinds.index("audio")
    # A spoken reply runs as its own job kind (its ETA apart from text replies').
    job = await stub.GetJob(job_pb2.GetJobRequest(job_id=events[0].accepted.job_id), timeout=10)
    assert job.job.kind == "chat_speech"

    unary = await stub.Chat(request, timeout=120)
    assert unary.audio.format == media_pb2.AUDIO_FORMAT_WAV
    with wave.open(io.BytesIO(unary.audio.data)) as reader:
        assert reader.getframerate() == rate == unary.audio.sample_rate_hz
        assert reader.getnchannels() == 1
        assert reader.getsampwidth() == 2
        assert reader.readframes(reader.getnframes()) == pcm


async def test_model_info_reports_voice_path(stub):
    info = await stub.GetModelInfo(omni_pb2.GetModelInfoRequest())
    assert info.model_info.family == "llama"
    assert info.model_info.architecture == "LlamaForCausalLM"
    assert info.supports_audio_input
    assert info.supports_speech_output
    assert not info.supports_image_input
    assert info.output_sample_rate_hz == piper().sample_rate
    assert omni_pb2.SESSION_MODE_HALF_DUPLEX in info.session_modes
    assert omni_pb2.SESSION_MODE_OMNI_DUPLEX not in info.session_modes
    assert info.limits.max_context_tokens == 8192
    voices = await stub.ListVoices(omni_pb2.ListVoicesRequest())
    assert [(v.voice_id, v.registered) for v in voices.voices][:1] == [("joe", False)]


@pytest.mark.parametrize(
    ("part", "field"),
    [
        (audio_part(b"RIFF\x00\x00\x00\x00WAVEjunk", media_pb2.AUDIO_FORMAT_WAV), ".audio.data"),
        (audio_part(b"\x01\x02" * 800, media_pb2.AUDIO_FORMAT_PCM_S16LE), ".audio.sample_rate_hz"),
        (
            audio_part(b"\x01\x02\x03", media_pb2.AUDIO_FORMAT_PCM_S16LE, sample_rate_hz=16000),
            ".audio.data",
        ),
        (audio_part(b"not audio at all"), ".audio.data"),
        (audio_part(wav(silence(0.5)), media_pb2.AUDIO_FORMAT_FLAC), ".audio.format"),
        (audio_part(wav(silence(61.0))), ".audio"),
    ],
    ids=["bad-wav", "pcm-without-rate", "odd-pcm", "unknown-bytes", "wrong-format", "too-long"],
)
async def test_bad_audio_is_invalid_argument(stub, part, field):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Chat(chat_request(part), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == [f"messages[0].content[0]{field}"]


async def test_unsupported_inputs_get_the_right_codes(stub):
    png = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(png, "PNG")
    image = omni_pb2.ContentPart(image=media_pb2.Image(data=png.getvalue()))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Chat(chat_request(image, text_part("What is this?")), timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    bad_order = omni_pb2.ChatRequest(
        messages=[omni_pb2.ChatMessage(role=chat_pb2.ROLE_ASSISTANT, content=[text_part("hi")])]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Chat(bad_order, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["messages[0].role"]

    request = chat_request(text_part("hi"), speech_on=True)
    request.speech.voice = "nobody"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Chat(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["speech.voice"]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Chat(chat_request(text_part("hi"), temperature=3.0), timeout=30)
    assert field_violations(caught.value) == ["sampling.temperature"]


async def test_sampling_violations_come_together(stub):
    bad = chat_request(text_part("hi"), temperature=3.0, top_p=0.0, stop=["ok", ""])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Chat(bad, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == [
        "sampling.temperature",
        "sampling.top_p",
        "sampling.stop[1]",
    ]


async def test_cancel_job_ends_the_stream_with_a_cancelled_finish(server, stub):
    story = chat_request(
        text_part("Tell me a very long story about a dragon."), max_new_tokens=LONG_TOKENS, seed=11
    )
    events: list[omni_pb2.StreamChatResponse] = []
    async with grpc.aio.insecure_channel(server.target) as channel:
        other_client = omni_pb2_grpc.OmniServiceStub(channel)

        async def listen() -> None:
            async for event in stub.StreamChat(story, timeout=300):
                events.append(event)
                if event.HasField("delta") and sum(e.HasField("delta") for e in events) == 2:
                    cancel = job_pb2.CancelJobRequest(job_id=events[0].accepted.job_id)
                    reply = await other_client.CancelJob(cancel, timeout=10)
                    assert reply.job.state == job_pb2.JOB_STATE_CANCELLED
                    assert reply.job.kind == "chat"

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(listen(), timeout=120)
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    assert events[-1].HasField("completed")
    completed = events[-1].completed
    assert completed.finish_reason == chat_pb2.FINISH_REASON_CANCELLED
    assert completed.seed == 11
    usage = completed.usage
    assert 2 <= usage.output_tokens < LONG_TOKENS
    assert usage.input_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.run_seconds > 0
    # The device is free at once: a short chat does not queue behind the stopped story.
    reply = await stub.Chat(chat_request(text_part("Hi"), max_new_tokens=2), timeout=60)
    assert reply.usage.queue_seconds < 10
