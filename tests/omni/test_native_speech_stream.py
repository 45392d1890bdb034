"""Native Qwen-Omni speech vocoded while the talker runs (`native_speech_chunk_codes`), with the
tiny random-weight Qwen3-Omni and Qwen2.5-Omni: audio leaves before the talker's last step, the
total length is always the whole-reply path's, the samples are the whole path's where they must
be (Qwen3-Omni: code2wav is causal; both: a chunk that covers the reply), an interrupted reply
sends nothing more, and one served StreamChat streams it."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
import torch

from mmserve.common.v1 import chat_pb2
from mmserve.omni.v1 import omni_pb2, omni_pb2_grpc
from services.omni.config import OmniSettings
from services.omni.engine import OmniEngine, VoiceChoice
from services.omni.families.base import Generated, SpeechTarget
from services.omni.families.qwen_omni_base import QwenOmniBase
from services.omni.families.streaming_vocoder import Code2WavStream, bigvgan_reach, dit_sample
from services.omni.generation import GenerationHooks, seed_everything
from services.omni.turns import AudioOut, ChatJob, SpeechRequest
from services.runtime.chat.messages import FinishReason, Message, Role, TextPart
from services.runtime.chat.sampling import SamplingPlan
from services.runtime.config import ConfigError, load_settings
from services.runtime.devices import TorchOptions
from tests.omni.support import start_omni, text_part, user

pytestmark = [
    pytest.mark.filterwarnings("ignore:Passing `repetition_penalty`:UserWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]

SEED = 2024
QWEN3_TALKER = 20  # codec steps: 19 frames reach code2wav (the last step's frame never does)
QWEN25_TALKER = 30  # codec codes: a random talker rarely ends on its own
RATE = 24000
MESSAGES = (Message(Role.USER, (TextPart("Hello there, how are you?"),)),)
SAMPLING = SamplingPlan(max_new_tokens=6, seed=SEED)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A Qwen3-Omni engine streaming every 4 codes; its family serves the in-process tests."""
    settings = OmniSettings(
        model="builtin:tiny-qwen3-omni",
        native_speech_chunk_codes=4,
        talker_max_new_tokens=QWEN3_TALKER,
        device="cpu",
        dtype="float32",
        attention="sdpa",
        asr_model="none",
        tts_model="none",
        data_dir=tmp_path_factory.mktemp("stream-data"),
    )
    loaded = OmniEngine(settings)
    loaded.load()
    return loaded


@pytest.fixture(scope="module")
def qwen3(engine):
    return engine.family


@pytest.fixture(scope="module")
def qwen25():
    from services.omni.builtin.tiny_qwen_omni import tiny_qwen_omni_dir
    from services.omni.families.qwen_omni import QwenOmniFamily

    family = QwenOmniFamily(
        tiny_qwen_omni_dir(),
        TorchOptions.from_specs("cpu", "float32", "sdpa", False),
        talker_max_new_tokens=QWEN25_TALKER,
    )
    family.load()
    return family


class TalkerSteps:
    """Counts the talker's forward calls (one per codec step, the prefill included)."""

    def __init__(self, family: QwenOmniBase) -> None:
        self.count = 0
        self._handle = family.model.talker.register_forward_pre_hook(self._step)

    def _step(self, *args: object) -> None:
        self.count += 1

    def close(self) -> None:
        self._handle.remove()


@dataclass
class Spoken:
    generated: Generated
    pieces: list[np.ndarray] = field(default_factory=list)
    emitted_at: list[int] = field(default_factory=list)  # talker steps done at each piece
    talker_steps: int = 0

    @property
    def waveform(self) -> np.ndarray:
        if self.generated.waveform is not None:
            assert not self.pieces
            return self.generated.waveform
        return np.concatenate(self.pieces) if self.pieces else np.zeros(0, np.float32)


def speak(
    family: QwenOmniBase,
    chunk: int,
    stop_after_talker_steps: int | None = None,
) -> Spoken:
    """One spoken reply, chunk codes at a time (0: the whole-reply path)."""
    family._speech_chunk = chunk
    steps = TalkerSteps(family)
    spoken = Spoken(Generated("", FinishReason.STOP, 0, 0))

    def on_audio(piece: np.ndarray) -> None:
        spoken.pieces.append(piece)
        spoken.emitted_at.append(steps.count)

    def should_stop() -> bool:
        return stop_after_talker_steps is not None and steps.count >= stop_after_talker_steps

    seed_everything(SEED)
    try:
        spoken.generated = family.generate(
            MESSAGES,
            SAMPLING,
            GenerationHooks(lambda *_: None, should_stop, on_audio),
            speech=SpeechTarget("Ethan"),
        )
    finally:
        steps.close()
    spoken.talker_steps = steps.count
    return spoken


@pytest.fixture(scope="module")
def qwen3_whole(qwen3):
    return speak(qwen3, 0)


@pytest.fixture(scope="module")
def qwen25_whole(qwen25):
    return speak(qwen25, 0)


def check_sane(streamed: np.ndarray, whole: np.ndarray) -> None:
    assert len(streamed) == len(whole) > 0
    assert np.isfinite(streamed).all()
    assert np.abs(streamed).max() <= 1.0
    ratio = np.sqrt(np.mean(streamed**2) / np.mean(whole**2))
    assert 0.5 < ratio < 2.0


# ---- settings ---------------------------------------------------------------------------------


def test_the_setting_defaults_to_the_whole_reply_path_and_refuses_negatives():
    assert load_settings(OmniSettings, []).native_speech_chunk_codes == 0
    settings = load_settings(OmniSettings, ["--native-speech-chunk-codes", "25"])
    assert settings.native_speech_chunk_codes == 25
    with pytest.raises(ConfigError, match="native_speech_chunk_codes"):
        load_settings(OmniSettings, ["--native-speech-chunk-codes", "-1"])


# ---- Qwen3-Omni -------------------------------------------------------------------------------


def test_qwen3_whole_path_is_unchanged_without_an_audio_hook(qwen3, qwen3_whole):
    assert not qwen3_whole.generated.streamed
    assert qwen3_whole.pieces == []
    assert qwen3_whole.generated.waveform is not None
    assert len(qwen3_whole.generated.waveform) > 0


def test_qwen3_speech_leaves_while_the_talker_runs(qwen3, qwen3_whole):
    spoken = speak(qwen3, 4)
    assert spoken.generated.streamed
    assert spoken.generated.waveform is None
    assert spoken.generated.text == qwen3_whole.generated.text
    assert spoken.talker_steps == qwen3_whole.talker_steps == QWEN3_TALKER
    # The frame of step k reaches the talker's forward at step k + 1: 4 frames after 5 steps.
    assert spoken.emitted_at[:3] == [5, 9, 13]
    assert spoken.emitted_at[0] < spoken.talker_steps
    # code2wav is causal and the reply is shorter than its 25 codes of left context, so each
    # piece is the whole decode's samples (to float rounding), and the length is the same.
    streamed = spoken.waveform
    check_sane(streamed, qwen3_whole.waveform)
    scale = np.abs(qwen3_whole.waveform).max()
    assert np.abs(streamed - qwen3_whole.waveform).max() <= 1e-4 * scale


def test_qwen3_chunk_covering_the_reply_is_the_whole_path_exactly(qwen3, qwen3_whole):
    spoken = speak(qwen3, 1000)
    assert spoken.generated.streamed
    assert spoken.emitted_at == [QWEN3_TALKER]  # one piece, when the talker is done
    assert np.array_equal(spoken.waveform, qwen3_whole.waveform)


def test_code2wav_stream_cuts_where_chunked_decode_does(qwen3):
    """Scaled down (segments of 5, 3 codes of context instead of 300 and 25): chunks equal to
    the segment are `chunked_decode` sample for sample; smaller chunks keep its length."""
    code2wav = qwen3.model.code2wav
    generator = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 2048, (1, code2wav.config.num_quantizers, 23), generator=generator)
    with torch.inference_mode():
        whole = code2wav.chunked_decode(codes, chunk_size=5, left_context_size=3).reshape(-1)

    def streamed(chunk: int) -> tuple[np.ndarray, int]:
        pieces: list[np.ndarray] = []
        stream = Code2WavStream(
            qwen3.model, chunk, pieces.append, lambda: False, segment=5, left_context=3
        )
        for frame in codes[0].unbind(-1):
            stream.push(frame)
        before_end = len(pieces)
        stream.finish(codes, lambda: pytest.fail("streamed pieces must not fall back"))
        return np.concatenate(pieces), before_end

    exact, before_end = streamed(5)
    assert before_end == 4
    assert np.array_equal(exact, whole.numpy())
    small, before_end = streamed(2)
    assert before_end == 13  # 2 + 2 + 1 codes per segment of 5, then 20..22; 22 at the end
    assert len(small) == len(whole)
    assert np.isfinite(small).all()


def test_cancel_in_the_talker_stops_the_audio(qwen3, qwen3_whole):
    spoken = speak(qwen3, 4, stop_after_talker_steps=10)
    assert spoken.generated.finish is FinishReason.CANCELLED
    assert spoken.generated.text == qwen3_whole.generated.text  # the text was complete
    assert spoken.emitted_at == [5, 9]  # nothing once the stop was seen
    assert spoken.talker_steps == 10
    assert len(spoken.waveform) < len(qwen3_whole.waveform)


# ---- the engine -------------------------------------------------------------------------------


def engine_reply(engine, emit_audio, **options):
    """One spoken reply through the engine (Ethan, 40 ms client chunks), text ignored."""
    job = ChatJob(MESSAGES, SAMPLING, SpeechRequest(enabled=True, voice="Ethan", chunk_ms=40))
    voice = VoiceChoice(speaker="Ethan")
    return engine.respond(job, voice, emit_text=lambda _: None, emit_audio=emit_audio, **options)


def test_engine_streams_native_speech_in_client_chunks(engine, qwen3_whole):
    steps = TalkerSteps(engine.family)
    chunks: list[AudioOut] = []
    sent_at: list[int] = []

    def emit_audio(chunk: AudioOut) -> None:
        chunks.append(chunk)
        sent_at.append(steps.count)

    try:
        result = engine_reply(engine, emit_audio, keep_audio=True)
    finally:
        steps.close()
    assert sent_at[0] < QWEN3_TALKER  # client chunks left before the talker's last step
    size = RATE * 40 // 1000 * 2
    assert [len(c.pcm) for c in chunks[:-1]] == [size] * (len(chunks) - 1)
    assert 0 < len(chunks[-1].pcm) <= size
    assert [c.index for c in chunks] == list(range(len(chunks)))
    pcm = b"".join(c.pcm for c in chunks)
    assert result.audio == pcm  # kept once, not twice
    assert len(pcm) == 2 * len(qwen3_whole.waveform)


def test_engine_cancel_in_the_talker_sends_no_more_audio(engine, qwen3_whole):
    steps = TalkerSteps(engine.family)
    sent_at: list[int] = []
    stopped = False

    def should_stop() -> bool:
        nonlocal stopped
        stopped = stopped or steps.count >= 12
        return stopped

    try:
        result = engine_reply(
            engine, lambda _: sent_at.append(steps.count), should_stop=should_stop
        )
    finally:
        steps.close()
    assert result.finish_reason is FinishReason.CANCELLED
    assert sent_at
    assert max(sent_at) < 12
    assert result.audio_seconds < len(qwen3_whole.waveform) / RATE


# ---- Qwen2.5-Omni -----------------------------------------------------------------------------


def test_qwen25_speech_leaves_while_the_talker_runs(qwen25, qwen25_whole):
    spoken = speak(qwen25, 6)
    assert spoken.generated.streamed
    assert spoken.talker_steps == qwen25_whole.talker_steps
    # Each window needs 12 codes of look-ahead (one DiT block): 6 new + 12 after 18 steps.
    assert spoken.emitted_at[:3] == [18, 24, 30]
    assert spoken.emitted_at[0] < spoken.talker_steps
    check_sane(spoken.waveform, qwen25_whole.waveform)
    # Approximate (windowed DiT), yet close to the whole path's speech.
    assert np.corrcoef(spoken.waveform, qwen25_whole.waveform)[0, 1] > 0.5


def test_qwen25_chunk_covering_the_reply_is_the_whole_path_exactly(qwen25, qwen25_whole):
    spoken = speak(qwen25, 1000)
    assert spoken.emitted_at == [QWEN25_TALKER]
    assert np.array_equal(spoken.waveform, qwen25_whole.waveform)


def test_dit_windows_solve_the_ode_as_transformers_does(qwen25):
    token2wav = qwen25.model.token2wav
    speaker = qwen25.model.speaker_map["Ethan"]
    condition = speaker["cond"].float()[None]
    reference = speaker["ref_mel"].float()
    codes = torch.randint(0, 8000, (1, 10), generator=torch.Generator().manual_seed(2))
    dit = token2wav.code2wav_dit_model
    with torch.inference_mode():
        torch.manual_seed(5)
        expected = dit.sample(condition, reference, codes)
        torch.manual_seed(5)
        noise = torch.randn(1, 10 * dit.config.repeats, dit.config.mel_dim)
        assert torch.equal(dit_sample(dit, condition, reference, codes, noise), expected)


def test_bigvgan_seams_are_exact_with_its_reach_of_mel(qwen25):
    vocoder = qwen25.model.token2wav.code2wav_bigvgan_model
    reach = bigvgan_reach(vocoder.config)
    mel = torch.randn(1, vocoder.config.mel_dim, 3 * reach, generator=torch.Generator()) - 5
    samples = int(np.prod(vocoder.config.upsample_rates))
    start, end = reach, 2 * reach
    with torch.inference_mode():
        whole = vocoder(mel)[start * samples : end * samples]
        part = vocoder(mel[..., start - reach : end + reach])[reach * samples : -reach * samples]
    assert torch.allclose(part, whole, rtol=0, atol=1e-6 * whole.abs().max())


# ---- served -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        process = start_omni(
            tmp_path_factory.mktemp("omni-stream"),
            [
                "--model", "builtin:tiny-qwen3-omni",
                "--talker-max-new-tokens", str(QWEN3_TALKER),
                "--native-speech-chunk-codes", "4",
                "--asr-model", "none",
            ],
        )  # fmt: skip
    yield process
    process.stop()


async def test_served_stream_chat_streams_native_speech(server, qwen3_whole):
    request = omni_pb2.ChatRequest(
        messages=[user(text_part("Hello there, how are you?"))],
        sampling=chat_pb2.SamplingParams(max_new_tokens=6, temperature=0.0, seed=SEED),
        speech=omni_pb2.SpeechOptions(enabled=True, voice="Ethan", chunk_ms=40),
    )
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = omni_pb2_grpc.OmniServiceStub(channel)
        events = [e async for e in stub.StreamChat(request, timeout=120)]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "completed"
    text = "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")
    assert text == qwen3_whole.generated.text
    pcm = b"".join(e.audio.audio.data for e in events if e.WhichOneof("event") == "audio")
    assert len(pcm) == 2 * len(qwen3_whole.waveform)
    assert "speech streamed while the talker ran" in server.log()
