"""The omni engine: one model family plus what it lacks (Whisper for speech in, a Piper voice
for speech out), Silero VAD for live sessions, and the reference-voice registry.

No gRPC here. The operations validate requests into plain `turns` objects; `respond` runs on the
executor's device thread and reports text and audio through callbacks as they are made.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.omni.asr import AsrOptions, WhisperAsr
from services.omni.builtin import BUILTINS
from services.omni.config import OmniSettings
from services.omni.families import create_family
from services.omni.families.base import ConversationState, Family, FamilyTraits, SpeechTarget
from services.omni.families.chat_llm import ChatLlmFamily, cap_new_tokens, eos_ids
from services.omni.generation import GenerationHooks, OmniChatDecoder, seed_everything
from services.omni.speech import SentenceSpeaker, SpeechWriter
from services.omni.tts import PiperTts, TtsOptions
from services.omni.turns import (
    ASR_RATE,
    AudioOut,
    AudioPart,
    ChatJob,
    ChatResult,
    FloatAudio,
    SpeechRequest,
)
from services.omni.vad import SileroModel, VadConfig, VoiceActivityDetector
from services.omni.voices import VOICE_PREFIX, VoiceRegistry
from services.runtime.builtin import resolve_model
from services.runtime.chat.causal_lm import TokenizedPrompt
from services.runtime.chat.continuous import decode_together
from services.runtime.chat.messages import (
    FinishReason,
    ImagePart,
    Message,
    PromptTokens,
    Role,
    TextDelta,
    TextPart,
)
from services.runtime.chat.sampling import Sampling, SamplingPlan, resolve_sampling
from services.runtime.devices import TorchOptions, dtype_name
from services.runtime.engine import Engine, EngineInfo
from services.runtime.errors import FailedPrecondition, InvalidArgument
from services.runtime.executor import JobContext
from services.runtime.model_source import discover_family

log = logging.getLogger("mmserve.omni")

SESSION_MODES = ("chat", "half_duplex", "audio_duplex", "omni_duplex")


@dataclass(frozen=True)
class Features:
    audio_input: bool
    image_input: bool
    speech_output: bool
    output_sample_rate: int
    session_modes: tuple[str, ...]
    max_context_tokens: int
    speakers: tuple[str, ...]
    voice_cloning: bool
    # Session modes whose sessions keep the device for their whole life. A model that decides
    # when to listen and when to speak by itself, continuously, would need it; none of the
    # families here does (VAD decides, one job per turn), so every mode shares the device.
    device_holding_modes: tuple[str, ...] = ()


@dataclass(frozen=True)
class VoiceChoice:
    speaker: str = ""  # built-in speaker
    voice_id: str = ""  # registered voice (cloning families only)


class OmniEngine(Engine):
    def __init__(self, settings: OmniSettings) -> None:
        self.settings = settings
        self.voices = VoiceRegistry(settings.data_dir / "voices", settings.max_voices)
        self.family: Family | None = None
        self.asr: WhisperAsr | None = None
        self.tts: PiperTts | None = None
        self.vad_model: SileroModel | None = None
        self._options: TorchOptions | None = None
        self._model_id = ""
        self._revision = ""
        self._decoder: OmniChatDecoder | None = None

    # ---- loading ------------------------------------------------------------------------

    def _model_folder(self) -> Path:
        settings = self.settings
        resolved = resolve_model(settings, BUILTINS, legacy=("local_model", settings.local_model))
        self._model_id = resolved.model_id
        self._revision = "" if resolved.builtin is not None else settings.revision or ""
        return resolved.folder

    def load(self) -> None:
        settings = self.settings
        folder = self._model_folder()
        self._options = TorchOptions.from_settings(settings, folder)
        family = create_family(
            folder,
            discover_family(folder),
            self._options,
            max_context_tokens=settings.max_context_tokens,
            talker_max_new_tokens=settings.talker_max_new_tokens,
            trust_remote_code=settings.trust_remote_code,
            speech_chunk_codes=settings.native_speech_chunk_codes,
        )
        family.load()
        self.family = family
        traits = family.traits
        # Transcribe and Synthesize need these even where the family hears and speaks itself.
        standalone = settings.standalone_speech
        if (standalone or not traits.audio_input) and settings.asr_model != "none":
            self.asr = WhisperAsr(
                AsrOptions(
                    settings.asr_model,
                    settings.asr_device,
                    settings.asr_compute_type,
                    settings.asr_language,
                    settings.asr_beam_size,
                    settings.asr_threads,
                )
            )
        if (standalone or not traits.speech_output) and settings.tts_model != "none":
            self.tts = PiperTts(
                TtsOptions(
                    settings.tts_model,
                    settings.tts_threads,
                    settings.tts_noise_scale,
                    settings.tts_noise_w_scale,
                    settings.tts_length_scale,
                )
            )
        self.vad_model = SileroModel()
        self.voices.load()
        if settings.default_voice and settings.default_voice not in self.features().speakers:
            raise ValueError(
                f"default_voice {settings.default_voice!r} is not one of "
                f"{', '.join(self.features().speakers) or 'no speakers'}"
            )

    def warmup(self) -> None:
        """One short reply, with speech when available, so the first request pays no
        first-call costs (allocator growth, ONNX graph optimisation, torch.compile)."""
        features = self.features()
        speech = SpeechRequest(enabled=features.speech_output, chunk_ms=self.settings.chunk_ms)
        job = ChatJob(
            (Message(Role.USER, (TextPart("Hi"),)),),
            SamplingPlan(max_new_tokens=2),
            speech,
        )
        started = time.monotonic()
        self.respond(job, VoiceChoice(), emit_text=lambda _: None, emit_audio=lambda _: None)
        if self.asr is not None:
            self.asr.transcribe(np.zeros(ASR_RATE // 2, dtype=np.float32))
        if self.tts is not None and self.traits.speech_output:  # only Synthesize speaks with it
            for _ in self.tts.synthesize("Hi."):
                pass
        if self.settings.batching:
            self._warm_decoding_together()
        log.info("warm-up done in %.2fs", time.monotonic() - started)

    # ---- text chats decoding together (iteration-level batching) ---------------------------

    def _warm_decoding_together(self) -> None:
        """Two short text chats through the decode loop: warms it up and proves the model can
        batch (a family other than a plain chat LLM, or a cache that does not merge, runs
        each chat alone)."""
        family = self.family
        if not isinstance(family, ChatLlmFamily):
            return
        eos = eos_ids(family.model.generation_config, family.tokenizer)
        self._decoder = OmniChatDecoder(family.model, family.tokenizer, eos)
        warm = [
            ChatJob((Message(Role.USER, (TextPart(text),)),), SamplingPlan(2))
            for text in ("Hi", "Hello there")
        ]
        prompts = [_Warm(self.tokenize(job, stream=False)) for job in warm]
        try:
            results = decode_together(self._decoder, prompts)
        except ValueError as exc:  # a cache that cannot be merged
            log.warning("decoding chats together is off for this model: %s", exc)
            self._decoder = None
            return
        for result in results:
            if isinstance(result, Exception):
                raise result

    def decoder(self) -> OmniChatDecoder | None:
        """The model for the decode loop; None when chats cannot decode together."""
        return self._decoder

    def tokenize(self, job: ChatJob, *, stream: bool) -> TokenizedPrompt | None:
        """The chat's prompt for the decode loop (CPU pool), or None when it must run alone:
        speech wanted, audio to transcribe, or no decode loop for this model."""
        family = self.family
        if not isinstance(family, ChatLlmFamily) or job.speech.enabled:
            return None
        if any(isinstance(p, AudioPart) for m in job.messages for p in m.content):
            return None
        ids = family.prompt_ids(job.messages)
        room = cap_new_tokens(len(ids), job.sampling.max_new_tokens, self.traits.max_context_tokens)
        plan = dataclasses.replace(job.sampling, max_new_tokens=room)
        return TokenizedPrompt(tuple(ids), plan, stream)

    @property
    def traits(self) -> FamilyTraits:
        if self.family is None:
            raise RuntimeError("engine is not loaded")
        return self.family.traits

    def info(self) -> EngineInfo:
        traits = self.traits
        assert self._options is not None
        return EngineInfo(
            family=traits.family,
            model_id=self._model_id,
            architecture=traits.architecture,
            dtype=dtype_name(self._options.dtype),
            device=str(self._options.device),
            revision=self._revision,
            attention_implementation=self._options.attention,
            compiled=self._options.compile,
            capabilities=self.capabilities(),
        )

    def capabilities(self) -> tuple[str, ...]:
        features = self.features()
        found = ["chat", "text_streaming", "sessions"]
        if features.audio_input:
            found.append("audio_input")
        if features.image_input:
            found.append("image_input")
        if features.speech_output:
            found.append("speech_output")
        if features.voice_cloning:
            found.append("voice_cloning")
        if self.asr is not None:
            found.append("transcribe")
            found.append(f"asr:{self.asr.name}")
        if self.tts is not None:
            found.append("synthesize")
        if self.tts is not None:
            found.append(f"tts:{self.tts.name}")
        return tuple(found)

    def features(self) -> Features:
        traits = self.traits
        audio_input = traits.audio_input or self.asr is not None
        speech_output = traits.speech_output or self.tts is not None
        if traits.speech_output:
            rate, speakers, cloning = (
                traits.speech_sample_rate,
                traits.speakers,
                traits.voice_cloning,
            )
        elif self.tts is not None:
            rate, speakers, cloning = self.tts.sample_rate, self.tts.speakers, False
        else:
            rate, speakers, cloning = 0, (), False
        modes = ["chat"]
        if audio_input:
            modes += ["half_duplex", "audio_duplex"]
            if traits.image_input:
                modes.append("omni_duplex")
        return Features(
            audio_input=audio_input,
            image_input=traits.image_input,
            speech_output=speech_output,
            output_sample_rate=rate,
            session_modes=tuple(modes),
            max_context_tokens=traits.max_context_tokens,
            speakers=speakers,
            voice_cloning=cloning,
        )

    def memory_bytes(self) -> int | None:
        return self.family.memory_bytes() if self.family is not None else None

    def close(self) -> None:
        self.family = None
        self.asr = None
        self.tts = None

    # ---- request resolution (loop thread, cheap) -----------------------------------------

    def resolve_sampling(self, given: Sampling) -> SamplingPlan:
        """Unset fields take the model's generation_config values, then the service's."""
        return resolve_sampling(
            given, self.traits.sampling_defaults, self.settings.sampling_defaults()
        )

    def check_inputs(self, messages: tuple[Message, ...], field: str = "messages") -> None:
        """FailedPrecondition for modalities the model cannot take."""
        features = self.features()
        for m_index, message in enumerate(messages):
            for p_index, part in enumerate(message.content):
                where = f"{field}[{m_index}].content[{p_index}]"
                if isinstance(part, ImagePart) and not features.image_input:
                    raise FailedPrecondition(f"{where}: this model does not take images")
                if isinstance(part, AudioPart) and not features.audio_input:
                    raise FailedPrecondition(
                        f"{where}: this model does not take audio and no ASR model is configured"
                    )

    def resolve_voice(self, speech: SpeechRequest, field: str = "speech") -> VoiceChoice:
        """Which voice a reply speaks with; raises for speech the model cannot give."""
        if not speech.enabled:
            return VoiceChoice()
        features = self.features()
        if not features.speech_output:
            raise FailedPrecondition("this model has no speech output (no TTS configured)")
        voice = speech.voice or self.settings.default_voice
        if not voice:
            return VoiceChoice(speaker=features.speakers[0] if features.speakers else "")
        if voice in features.speakers:
            return VoiceChoice(speaker=voice)
        if voice.startswith(VOICE_PREFIX) and self.voices.get(voice) is not None:
            if not features.voice_cloning:
                raise FailedPrecondition(
                    f"{field}.voice: the loaded model cannot speak with registered voices "
                    f"(built-in speakers: {', '.join(features.speakers)})"
                )
            return VoiceChoice(voice_id=voice)
        raise InvalidArgument.for_field(
            f"{field}.voice", f"unknown voice {voice!r}; see ListVoices"
        )

    # ---- device thread --------------------------------------------------------------------

    def transcribe(self, samples: FloatAudio) -> str:
        if self.asr is None:
            raise FailedPrecondition("no ASR model is configured")
        return self.asr.transcribe(samples)

    def chat(self, ctx: JobContext, job: ChatJob, voice: VoiceChoice, stream: bool) -> ChatResult:
        """A Chat or StreamChat job: streams text and audio through ctx.emit when `stream`,
        else collects the speech into the result."""

        def check() -> bool:
            ctx.check()
            return False

        if not stream:
            return self.respond(
                job, voice, emit_text=_drop, emit_audio=_drop, should_stop=check, keep_audio=True
            )
        return self.respond(
            job,
            voice,
            emit_text=ctx.emit,
            emit_audio=ctx.emit,
            should_stop=check,
            on_prompt=lambda tokens: ctx.emit(PromptTokens(tokens)),
        )

    def respond(
        self,
        job: ChatJob,
        voice: VoiceChoice,
        *,
        emit_text: Callable[[TextDelta], None],
        emit_audio: Callable[[AudioOut], None],
        should_stop: Callable[[], bool] = lambda: False,
        keep_audio: bool = False,
        state: ConversationState | None = None,
        on_prompt: Callable[[int], None] | None = None,
    ) -> ChatResult:
        """Generates one reply: audio parts are transcribed first when the family cannot hear;
        speech comes from the family's own talker or, sentence by sentence, from the TTS.
        `on_prompt` hears the prompt's token count once the family has tokenized it."""
        family = self.family
        assert family is not None
        messages = self._hearable(job.messages)
        speech = job.speech
        writer: SpeechWriter | None = None
        speaker: SentenceSpeaker | None = None
        target: SpeechTarget | None = None
        if speech.enabled:
            native = family.traits.speech_output
            rate = family.traits.speech_sample_rate if native else self._tts().sample_rate
            writer = SpeechWriter(rate, speech.chunk_ms, emit_audio, keep=keep_audio)
            if native:
                reference = self.voices.sample(voice.voice_id) if voice.voice_id else None
                transcript = ""
                if voice.voice_id:
                    registered = self.voices.get(voice.voice_id)
                    transcript = registered.transcript if registered else ""
                target = SpeechTarget(voice.speaker, reference, transcript)
            else:
                speaker = SentenceSpeaker(self._tts(), voice.speaker, writer, should_stop)

        def on_text(delta: str, tokens: int) -> None:
            emit_text(TextDelta(delta, tokens))
            if speaker is not None:
                speaker.feed(delta)

        # Native speech may come while the talker runs (native_speech_chunk_codes).
        on_audio = writer.add_waveform if writer is not None and target is not None else None
        seed_everything(job.sampling.seed)
        generated = family.generate(
            messages,
            job.sampling,
            GenerationHooks(on_text, should_stop, on_audio, on_prompt),
            speech=target,
            state=state,
        )
        interrupted = generated.finish is FinishReason.CANCELLED
        if speaker is not None:
            speaker.finish(interrupted=interrupted)
            if speaker.interrupted:
                interrupted = True
        elif writer is not None:
            if generated.waveform is not None and not generated.streamed and not interrupted:
                writer.add_waveform(generated.waveform)
            if not interrupted:  # what a streamed reply had not yet sent stays unsent
                writer.finish()
        finish = FinishReason.CANCELLED if interrupted else generated.finish
        return ChatResult(
            text=generated.text,
            finish_reason=finish,
            input_tokens=generated.input_tokens,
            output_tokens=generated.output_tokens,
            seed=job.sampling.seed,
            audio=writer.pcm if writer is not None else b"",
            sample_rate=writer.sample_rate if writer is not None else 0,
            audio_seconds=writer.seconds if writer is not None else 0.0,
        )

    def _tts(self) -> PiperTts:
        if self.tts is None:
            raise FailedPrecondition("this model has no speech output (no TTS configured)")
        return self.tts

    def _hearable(self, messages: tuple[Message, ...]) -> tuple[Message, ...]:
        """Replaces audio with its transcript for families that cannot hear."""
        if self.traits.audio_input:
            return messages
        result = []
        for message in messages:
            if not any(isinstance(p, AudioPart) for p in message.content):
                result.append(message)
                continue
            texts = []
            for part in message.content:
                if isinstance(part, AudioPart):
                    texts.append(self.transcribe(part.samples))
                elif isinstance(part, TextPart):
                    texts.append(part.text)
            joined = " ".join(t.strip() for t in texts if t.strip())
            result.append(Message(message.role, (TextPart(joined),)))
        return tuple(result)

    def new_vad(self) -> VoiceActivityDetector:
        assert self.vad_model is not None
        settings = self.settings
        return VoiceActivityDetector(
            self.vad_model,
            VadConfig(
                threshold=settings.vad_threshold,
                min_speech_ms=settings.vad_min_speech_ms,
                min_silence_ms=settings.vad_min_silence_ms,
                pad_ms=settings.vad_pad_ms,
                max_utterance_seconds=settings.session_max_turn_seconds,
            ),
        )


@dataclass(frozen=True)
class _Warm:
    prompt: TokenizedPrompt | None


def _drop(_: object) -> None:
    """Unary chats send nothing while they run."""
