"""The Qwen3-Omni path with a tiny random-weight Qwen3OmniMoeForConditionalGeneration (the real
classes: MoE thinker with audio and vision encoders, MoE talker with its code predictor,
code2wav; the real Qwen vocabulary and Qwen3-Omni's special tokens): image + audio + text in,
greedy text equal to in-process thinker generation, speech streamed as 24 kHz PCM equal to the
in-process talker + code2wav output made with the same seed, error codes, and a live session
whose second turn (computed from the kept KV cache) equals in-process generation over the whole
conversation."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from mmserve.common.v1 import chat_pb2, media_pb2
from mmserve.omni.v1 import omni_pb2, omni_pb2_grpc
from services.runtime.devices import TorchOptions
from tests.omni.support import EventLog, audio_part, start_omni, text_part, turn_done, user, wav
from tests.omni.test_qwen_omni import check_session_reuse

# transformers' own talker generate() warns about this on every call; nothing to act on.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Passing `repetition_penalty`:UserWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]

TALKER_TOKENS = 12
SEED = 4321
RATE = 24000


@pytest.fixture(scope="module")
def folder():
    from services.omni.builtin.tiny_qwen3_omni import tiny_qwen3_omni_dir

    return tiny_qwen3_omni_dir()


@pytest.fixture(scope="module")
def server(tmp_path_factory, folder):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        process = start_omni(
            tmp_path_factory.mktemp("omni-qwen3"),
            ["--model", str(folder), "--talker-max-new-tokens", str(TALKER_TOKENS)],
        )
    yield process
    process.stop()


@pytest.fixture
async def stub(server):
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield omni_pb2_grpc.OmniServiceStub(channel)


@pytest.fixture(scope="module")
def family(folder):
    """The family loaded in-process (for the KV reuse test); its model is also the reference."""
    from services.omni.families.qwen3_omni import Qwen3OmniFamily

    loaded = Qwen3OmniFamily(
        folder,
        TorchOptions.from_specs("cpu", "float32", "sdpa", False),
        talker_max_new_tokens=6,
    )
    loaded.load()
    return loaded


@pytest.fixture(scope="module")
def reference(family):
    """The transformers model and processor, called below only through plain transformers APIs.
    Loaded with the two documented workarounds: the processor assembled without a video
    processor, and the talker's audio_config (families.qwen3_omni.fix_talker_audio_config)."""
    return family.model, family.processor


def clip() -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 330 * np.arange(16000) / 16000)).astype(np.float32)


def picture() -> Image.Image:
    return Image.new("RGB", (90, 70), (200, 120, 10))


def png(image: Image.Image) -> bytes:
    data = io.BytesIO()
    image.save(data, "PNG")
    return data.getvalue()


def request(speech_on: bool, voice: str = "Ethan") -> omni_pb2.ChatRequest:
    return omni_pb2.ChatRequest(
        messages=[
            omni_pb2.ChatMessage(role=chat_pb2.ROLE_SYSTEM, content=[text_part("You are a test.")]),
            user(
                omni_pb2.ContentPart(image=media_pb2.Image(data=png(picture()))),
                audio_part(wav(clip())),
                text_part("What do you see and hear?"),
            ),
        ],
        sampling=chat_pb2.SamplingParams(max_new_tokens=8, temperature=0.0, seed=SEED),
        speech=omni_pb2.SpeechOptions(enabled=speech_on, voice=voice, chunk_ms=40),
    )


def in_process(reference, conversation, images, audios, speech: str | None, max_new: int = 8):
    """Greedy reply ids and (with a speaker) the waveform, from plain transformers calls."""
    model, processor = reference
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    inputs = processor(
        text=[prompt], images=images or None, audio=audios or None, return_tensors="pt"
    )
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt_length = inputs["input_ids"].shape[1]
    torch.manual_seed(SEED)
    with torch.inference_mode():
        if speech is None:
            ids = model.thinker.generate(
                **inputs, max_new_tokens=max_new, do_sample=False, eos_token_id=[eos]
            )
            return ids[0, prompt_length:], None
        ids, waveform = model.generate(
            **inputs,
            speaker=speech,
            thinker_max_new_tokens=max_new,
            thinker_do_sample=False,
            thinker_eos_token_id=[eos],
            talker_max_new_tokens=TALKER_TOKENS,
        )
    return ids[0, prompt_length:], waveform.reshape(-1).numpy()


def pcm16(waveform: np.ndarray) -> np.ndarray:
    return (np.clip(waveform, -1, 1) * 32767).round().astype(np.int16)


def assert_same_speech(served: np.ndarray, waveform: np.ndarray) -> None:
    assert len(served) == len(waveform) > 0
    assert np.abs(served.astype(np.int32) - pcm16(waveform).astype(np.int32)).max() <= 1


async def test_model_info_of_qwen3_omni(stub):
    info = await stub.GetModelInfo(omni_pb2.GetModelInfoRequest())
    assert info.model_info.family == "qwen3_omni_moe"
    assert info.model_info.architecture == "Qwen3OmniMoeForConditionalGeneration"
    assert info.supports_audio_input
    assert info.supports_image_input
    assert info.supports_speech_output
    assert info.output_sample_rate_hz == RATE
    assert omni_pb2.SESSION_MODE_OMNI_DUPLEX in info.session_modes
    voices = await stub.ListVoices(omni_pb2.ListVoicesRequest())
    assert [v.voice_id for v in voices.voices] == ["Aiden", "Chelsie", "Ethan"]


async def test_served_text_and_speech_equal_in_process(stub, reference):
    text_reply = await stub.Chat(request(speech_on=False), timeout=120)
    events = [e async for e in stub.StreamChat(request(speech_on=True), timeout=180)]
    conversation = [
        {"role": "system", "content": [{"type": "text", "text": "You are a test."}]},
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "audio"},
                {"type": "text", "text": "What do you see and hear?"},
            ],
        },
    ]
    ids, _ = in_process(reference, conversation, [picture()], [clip()], None)
    expected = reference[1].tokenizer.decode(ids, skip_special_tokens=True)
    assert expected.strip()
    assert text_reply.text == expected
    assert text_reply.usage.output_tokens == len(ids)
    assert text_reply.usage.input_tokens > 20  # image and audio placeholder tokens included

    deltas = "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")
    chunks = [e.audio.audio for e in events if e.WhichOneof("event") == "audio"]
    assert deltas == expected
    assert {c.sample_rate_hz for c in chunks} == {RATE}
    assert {c.format for c in chunks} == {media_pb2.AUDIO_FORMAT_PCM_S16LE}
    assert all(len(c.data) == RATE * 40 // 1000 * 2 for c in chunks[:-1])
    served = np.frombuffer(b"".join(c.data for c in chunks), dtype="<i2")
    _, waveform = in_process(reference, conversation, [picture()], [clip()], "Ethan")
    assert_same_speech(served, waveform)
    assert events[-1].completed.audio_seconds == pytest.approx(len(served) / RATE)


async def test_bad_input_gets_the_right_codes(stub):
    async def code_of(chat: omni_pb2.ChatRequest) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Chat(chat, timeout=30)
        return caught.value.code()

    assert await code_of(request(True, voice="Nobody")) == grpc.StatusCode.INVALID_ARGUMENT
    garbled = request(False)
    garbled.messages[1].content[1].audio.data = b"RIFF....WAVEfmt nonsense"
    assert await code_of(garbled) == grpc.StatusCode.INVALID_ARGUMENT
    broken_image = request(False)
    broken_image.messages[1].content[0].image.data = b"\x89PNG not really"
    assert await code_of(broken_image) == grpc.StatusCode.INVALID_ARGUMENT
    # Qwen3-Omni speaks only with its built-in speakers.
    made = await stub.RegisterVoice(
        omni_pb2.RegisterVoiceRequest(
            name="Tone", sample=media_pb2.Audio(data=wav(np.concatenate([clip()] * 4)))
        )
    )
    assert await code_of(request(True, voice=made.voice.voice_id)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )


async def test_session_second_turn_equals_in_process_over_the_whole_conversation(stub, reference):
    opened = await stub.OpenSession(
        omni_pb2.OpenSessionRequest(
            mode=omni_pb2.SESSION_MODE_CHAT,
            sampling=chat_pb2.SamplingParams(max_new_tokens=6, temperature=0.0, seed=SEED),
            speech=omni_pb2.SpeechOptions(enabled=True, voice="Chelsie"),
        ),
        timeout=30,
    )
    log = EventLog(stub, opened.session_id)
    pushes = [
        {"image": media_pb2.Image(data=png(picture()))},
        {"text": "What is this?", "end_of_turn": True},
        {"text": "Tell me more.", "end_of_turn": True},
    ]
    try:
        for sequence, push in enumerate(pushes[:2]):
            await stub.PushSessionInput(
                omni_pb2.PushSessionInputRequest(
                    session_id=opened.session_id, sequence=sequence, **push
                )
            )
        await log.wait(turn_done(0), timeout=120)
        await stub.PushSessionInput(
            omni_pb2.PushSessionInputRequest(session_id=opened.session_id, sequence=2, **pushes[2])
        )
        done = await log.wait(turn_done(1), timeout=120)
    finally:
        await stub.CloseSession(omni_pb2.CloseSessionRequest(session_id=opened.session_id))
    await log.ended(timeout=10)

    def reply(turn: int) -> tuple[str, np.ndarray]:
        mine = [e for e in log.events if e.turn == turn]
        text = "".join(e.delta.text for e in mine if e.WhichOneof("event") == "delta")
        pcm = b"".join(e.audio.audio.data for e in mine if e.WhichOneof("event") == "audio")
        return text, np.frombuffer(pcm, dtype="<i2")

    first_text, _ = reply(0)
    second_text, second_speech = reply(1)
    # The session's user turn: its text, then its image (the order the session gathers them).
    conversation = [
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image"}]},
        {"role": "assistant", "content": [{"type": "text", "text": first_text}]},
        {"role": "user", "content": [{"type": "text", "text": "Tell me more."}]},
    ]
    ids, waveform = in_process(reference, conversation, [picture()], [], "Chelsie", max_new=6)
    assert second_text == reference[1].tokenizer.decode(ids, skip_special_tokens=True)
    assert done.turn_completed.usage.output_tokens == len(ids)
    assert_same_speech(second_speech, waveform)


def test_session_turns_reuse_the_thinker_cache(family):
    check_session_reuse(family)
