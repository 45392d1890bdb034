"""The native Qwen2.5-Omni path with a tiny random-weight model (real classes, real Qwen
tokenizer): image + audio + text in, greedy text equal to in-process generation, and speech
(talker + token2wav, a built-in speaker) streamed as 24 kHz PCM equal to the in-process waveform
made with the same seed; a session's second turn computed from the kept KV cache equals a fresh
computation of the whole conversation, text and speech."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from mmserve.common.v1 import chat_pb2, media_pb2
from mmserve.omni.v1 import omni_pb2, omni_pb2_grpc
from services.omni.families.base import ConversationState, Family, SpeechTarget
from services.omni.generation import GenerationHooks, seed_everything
from services.omni.turns import AudioPart
from services.runtime.chat.messages import ImagePart, Message, Role, TextPart
from services.runtime.chat.sampling import SamplingPlan
from services.runtime.devices import TorchOptions
from tests.omni.support import (
    EventLog,
    audio_part,
    push_audio,
    silence,
    speech,
    start_omni,
    text_part,
    turn_done,
    user,
    wav,
)

# transformers' own talker generate() warns about this on every call; nothing to act on.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Passing `repetition_penalty`:UserWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]

TALKER_TOKENS = 20
SEED = 1234


@pytest.fixture(scope="module")
def folder():
    from services.omni.builtin.tiny_qwen_omni import tiny_qwen_omni_dir

    return tiny_qwen_omni_dir()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("omni-qwen")


@pytest.fixture(scope="module")
def server(workdir, folder):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        process = start_omni(
            workdir,
            [
                "--model", "builtin:tiny-qwen2.5-omni",
                "--talker-max-new-tokens", str(TALKER_TOKENS),
                "--recordings-enabled",
                "--vad-min-silence-ms", "400",
            ],
        )  # fmt: skip
    yield process
    process.stop()


@pytest.fixture
async def stub(server):
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield omni_pb2_grpc.OmniServiceStub(channel)


def clip() -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)


def picture() -> Image.Image:
    return Image.new("RGB", (100, 80), (10, 200, 10))


def request(speech_on: bool) -> omni_pb2.ChatRequest:
    png = io.BytesIO()
    picture().save(png, "PNG")
    return omni_pb2.ChatRequest(
        messages=[
            omni_pb2.ChatMessage(role=chat_pb2.ROLE_SYSTEM, content=[text_part("You are a test.")]),
            user(
                omni_pb2.ContentPart(image=media_pb2.Image(data=png.getvalue())),
                audio_part(wav(clip())),
                text_part("What do you see and hear?"),
            ),
        ],
        sampling=chat_pb2.SamplingParams(max_new_tokens=8, temperature=0.0, seed=SEED),
        speech=omni_pb2.SpeechOptions(enabled=speech_on, voice="Ethan", chunk_ms=40),
    )


@pytest.fixture(scope="module")
def family(folder):
    """The family loaded in-process (for the KV reuse test); its model is also the reference."""
    from services.omni.families.qwen_omni import QwenOmniFamily

    loaded = QwenOmniFamily(
        folder,
        TorchOptions.from_specs("cpu", "float32", "sdpa", False),
        talker_max_new_tokens=4,
    )
    loaded.load()
    return loaded


@pytest.fixture(scope="module")
def reference(family):
    """The transformers model and the processor (assembled the documented way, as torchvision is
    missing), called below only through plain transformers APIs."""
    return family.model, family.processor


def in_process(reference, speech_on: bool):
    model, processor = reference
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
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=[picture()], audio=[clip()], return_tensors="pt")
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(SEED)
    with torch.inference_mode():
        if not speech_on:
            ids = model.thinker.generate(
                **inputs, max_new_tokens=8, do_sample=False, eos_token_id=[eos]
            )
            return ids[0, inputs["input_ids"].shape[1] :], None, processor
        pixels = inputs.pop("pixel_values")
        ids, waveform = model.generate(
            **inputs,
            thinker_pixel_values=pixels,
            speaker="Ethan",
            thinker_max_new_tokens=8,
            thinker_do_sample=False,
            thinker_eos_token_id=[eos],
            talker_max_new_tokens=TALKER_TOKENS,
        )
    return ids[0, inputs["input_ids"].shape[1] :], waveform.reshape(-1).numpy(), processor


async def test_model_info_of_the_native_family(stub):
    info = await stub.GetModelInfo(omni_pb2.GetModelInfoRequest())
    assert info.model_info.family == "qwen2_5_omni"
    assert info.model_info.architecture == "Qwen2_5OmniForConditionalGeneration"
    assert info.supports_audio_input
    assert info.supports_image_input
    assert info.supports_speech_output
    assert info.output_sample_rate_hz == 24000
    assert omni_pb2.SESSION_MODE_OMNI_DUPLEX in info.session_modes
    voices = await stub.ListVoices(omni_pb2.ListVoicesRequest())
    assert [v.voice_id for v in voices.voices] == ["Chelsie", "Ethan"]


async def test_served_text_and_speech_equal_in_process(stub, reference):
    text_reply = await stub.Chat(request(speech_on=False), timeout=120)
    events = [e async for e in stub.StreamChat(request(speech_on=True), timeout=180)]
    ids, _, processor = in_process(reference, speech_on=False)
    expected = processor.tokenizer.decode(ids, skip_special_tokens=True)
    assert text_reply.text == expected
    assert text_reply.usage.output_tokens == len(ids)
    assert text_reply.usage.input_tokens > 20  # image and audio placeholder tokens included

    deltas = "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")
    chunks = [e.audio.audio for e in events if e.WhichOneof("event") == "audio"]
    assert deltas == expected
    assert chunks
    assert {c.sample_rate_hz for c in chunks} == {24000}
    assert {c.format for c in chunks} == {media_pb2.AUDIO_FORMAT_PCM_S16LE}
    assert all(len(c.data) == 24000 * 40 // 1000 * 2 for c in chunks[:-1])
    served = np.frombuffer(b"".join(c.data for c in chunks), dtype="<i2")
    _, waveform, _ = in_process(reference, speech_on=True)
    assert len(served) == len(waveform)
    local = (np.clip(waveform, -1, 1) * 32767).round().astype(np.int16)
    assert np.abs(served.astype(np.int32) - local.astype(np.int32)).max() <= 1
    assert events[-1].completed.audio_seconds == pytest.approx(len(served) / 24000)


async def test_registered_voices_are_refused_by_a_family_that_cannot_clone(stub):
    sample = wav(np.concatenate([clip()] * 4))
    made = await stub.RegisterVoice(
        omni_pb2.RegisterVoiceRequest(name="Tone", sample=media_pb2.Audio(data=sample))
    )
    chat = request(speech_on=True)
    chat.speech.voice = made.voice.voice_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Chat(chat, timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_omni_duplex_session_with_video_frames_is_recorded(stub, workdir):
    opened = await stub.OpenSession(
        omni_pb2.OpenSessionRequest(
            mode=omni_pb2.SESSION_MODE_OMNI_DUPLEX,
            sampling=chat_pb2.SamplingParams(max_new_tokens=4),
            speech=omni_pb2.SpeechOptions(enabled=True),
            record=True,
        ),
        timeout=30,
    )
    assert opened.output_sample_rate_hz == 24000
    log = EventLog(stub, opened.session_id)
    png = io.BytesIO()
    picture().save(png, "PNG")
    try:
        await stub.PushSessionInput(
            omni_pb2.PushSessionInputRequest(
                session_id=opened.session_id,
                sequence=0,
                image=media_pb2.Image(data=png.getvalue()),
            )
        )
        turn = np.concatenate([silence(0.3), speech("What do you see?"), silence(0.8)])
        await push_audio(stub, opened.session_id, turn, 1)
        done = await log.wait(turn_done(0), timeout=120)
    finally:
        closed = await stub.CloseSession(
            omni_pb2.CloseSessionRequest(session_id=opened.session_id), timeout=30
        )
    await log.ended(timeout=10)
    kinds = log.kinds()
    assert "audio" in kinds
    assert "delta" in kinds
    # The frame and the speech went to the model natively: image and audio tokens in the prompt.
    assert done.turn_completed.usage.input_tokens > 30
    assert closed.turns == 1
    assert closed.recording_path == f"recordings/{opened.session_id}"
    folder = workdir / "data" / closed.recording_path
    assert sorted(p.name for p in folder.iterdir()) == [
        "input.wav",
        "meta.json",
        "output.wav",
        "transcript.jsonl",
    ]
    import soundfile

    heard, rate = soundfile.read(folder / "input.wav")
    assert rate == 16000
    assert len(heard) == len(turn)
    spoken, rate = soundfile.read(folder / "output.wav")
    assert rate == 24000
    assert len(spoken) > 0


def check_session_reuse(family: Family) -> None:
    """Two turns of a live session through `family` with speech: the second turn, computed from
    the cache the first left (only the new tokens go through the thinker), gives the text and the
    speech a fresh computation of the whole conversation gives."""
    thinker = family.model.thinker.model  # type: ignore[attr-defined]
    language_model = getattr(thinker, "language_model", thinker)
    computed: list[int] = []
    handle = language_model.register_forward_pre_hook(
        lambda _module, _args, kwargs: computed.append(kwargs["inputs_embeds"].shape[1]),
        with_kwargs=True,
    )
    hooks = GenerationHooks(lambda _text, _tokens: None, lambda: False)
    voice = SpeechTarget(family.traits.speakers[-1])
    sampling = SamplingPlan(max_new_tokens=6, seed=SEED)
    first_turn = (
        Message(Role.SYSTEM, (TextPart("You are a test."),)),
        Message(Role.USER, (ImagePart(picture()), AudioPart(clip()), TextPart("What is it?"))),
    )
    try:
        state = ConversationState()
        seed_everything(SEED)
        first = family.generate(first_turn, sampling, hooks, speech=voice, state=state)
        # The next turn brings new media after the cached ones: a second image and clip.
        conversation = (
            *first_turn,
            Message(Role.ASSISTANT, (TextPart(first.text),)),
            Message(
                Role.USER,
                (
                    ImagePart(Image.new("RGB", (64, 48), (200, 10, 10))),
                    AudioPart(clip()[:8000]),
                    TextPart("And this?"),
                ),
            ),
        )

        def second(session: ConversationState):
            computed.clear()
            seed_everything(SEED)
            reply = family.generate(conversation, sampling, hooks, speech=voice, state=session)
            return reply, computed[0]

        reused, reused_prefill = second(state)
        fresh, fresh_prefill = second(ConversationState())
    finally:
        handle.remove()
    assert fresh_prefill == fresh.input_tokens == reused.input_tokens
    # Only the reply (as the template writes it back) and the new user turn were computed.
    assert reused_prefill <= fresh.input_tokens - first.input_tokens + 1
    assert reused.text == fresh.text
    assert reused.output_tokens == fresh.output_tokens
    assert reused.waveform is not None
    assert fresh.waveform is not None
    assert len(reused.waveform) == len(fresh.waveform) > 0
    assert np.abs(reused.waveform - fresh.waveform).max() < 1e-3


def test_session_turns_reuse_the_thinker_cache(family):
    check_session_reuse(family)
