"""mmserve.omni.v1.OmniService as operations: Chat and StreamChat run one chat job (validated on
the loop, media decoded on the CPU pool, the reply generated on the device thread); sessions,
voices and model info are answered on the loop (`session_ops` for the sessions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmserve.common.v1 import media_pb2
from mmserve.omni.v1 import omni_pb2
from services.omni.audio import PCM, AudioLimits, wav_bytes
from services.omni.chat_stream import OmniChatStream
from services.omni.config import OmniSettings
from services.omni.engine import OmniEngine, VoiceChoice
from services.omni.recording_ops import recording_handlers
from services.omni.requests import (
    MediaPolicy,
    check_messages,
    decode_audio_message,
    decode_messages,
    speech_request,
)
from services.omni.session_ops import session_handlers
from services.omni.session_runner import Mode
from services.omni.speech_ops import fill_speech_info, speech_handlers
from services.omni.turns import ChatJob, ChatResult, SpeechRequest
from services.omni.voices import VOICE_PREFIX
from services.runtime import job_protos
from services.runtime.app import ServiceRuntime
from services.runtime.chat.causal_lm import TokenizedPrompt
from services.runtime.chat.continuous import DecodeLoop
from services.runtime.chat.protos import finish_reason_proto, parse_sampling
from services.runtime.chat.sampling import SamplingPlan
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, ServingError
from services.runtime.executor import BatchSpec, JobContext, JoinSession, JoinSpec
from services.runtime.operations import (
    BatchedOperation,
    CallFacts,
    Inline,
    OperationTable,
    StreamRenderer,
    Usage,
)

_MODE_ENUMS = {
    Mode.CHAT: omni_pb2.SESSION_MODE_CHAT,
    Mode.HALF_DUPLEX: omni_pb2.SESSION_MODE_HALF_DUPLEX,
    Mode.AUDIO_DUPLEX: omni_pb2.SESSION_MODE_AUDIO_DUPLEX,
    Mode.OMNI_DUPLEX: omni_pb2.SESSION_MODE_OMNI_DUPLEX,
}


def media_policy(runtime: ServiceRuntime) -> MediaPolicy:
    settings = runtime.settings_as(OmniSettings)
    return MediaPolicy(
        uris=runtime.uri_policy,
        audio=AudioLimits(settings.max_audio_seconds, settings.max_audio_bytes),
        load_image=runtime.load_image,
    )


# ---- chat -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatCall:
    """A checked Chat request: media still encoded."""

    messages: tuple[omni_pb2.ChatMessage, ...]
    sampling: SamplingPlan
    speech: SpeechRequest
    voice: VoiceChoice
    stream: bool


@dataclass(frozen=True)
class PreparedChat:
    job: ChatJob
    voice: VoiceChoice
    stream: bool
    # Set when the chat decodes together with others (text in, text out); None runs it alone.
    prompt: TokenizedPrompt | None = None


class ChatOperation(BatchedOperation[ChatCall, PreparedChat, ChatResult]):
    """Chat and StreamChat. With settings.batching on (the default) and a plain chat LLM, text
    chats decode together: each joins the running decode batch at its next token and leaves it
    when done (services.runtime.chat.continuous); spoken replies and chats with audio to
    transcribe run alone, as every chat does with batching off."""

    kind = "chat"

    def __init__(self, runtime: ServiceRuntime, policy: MediaPolicy) -> None:
        super().__init__(runtime)
        self.engine = runtime.engine_as(OmniEngine)
        self.settings = runtime.settings_as(OmniSettings)
        self.policy = policy

    def parse(self, message: omni_pb2.ChatRequest, call: CallFacts) -> ChatCall:
        sampling = self.engine.resolve_sampling(parse_sampling(message.sampling))
        speech = speech_request(message.speech, self.settings.chunk_ms)
        voice = self.engine.resolve_voice(speech)
        messages = tuple(message.messages)
        check_messages(messages, self.settings.max_messages, self.settings.max_images)
        return ChatCall(messages, sampling, speech, voice, call.streaming)

    def prepare(self, request: ChatCall) -> PreparedChat:
        messages = decode_messages(request.messages, self.policy)
        self.engine.check_inputs(messages)
        job = ChatJob(messages, request.sampling, request.speech)
        prompt = None
        if self.settings.batching and self.engine.decoder() is not None:
            prompt = self.engine.tokenize(job, stream=request.stream)
        return PreparedChat(job, request.voice, request.stream, prompt)

    def join_spec(self) -> JoinSpec | None:
        if not self.settings.batching or self.engine.decoder() is None:
            return None
        return JoinSpec(self.settings.batch_max_size)

    def run_joined(self, session: JoinSession) -> None:
        decoder = self.engine.decoder()
        assert decoder is not None
        DecodeLoop(decoder, self.settings.batch_prefill_tokens).run(session)

    def solo(self, prepared: PreparedChat) -> bool:
        return prepared.prompt is None

    def batch_spec(self) -> BatchSpec | None:
        return None  # chats that cannot join run alone

    def run_batch(
        self, prepared: list[PreparedChat], contexts: list[JobContext]
    ) -> list[ChatResult | Exception]:
        return [self.run(one, ctx) for one, ctx in zip(prepared, contexts, strict=True)]

    def job_kind(self, prepared: PreparedChat) -> str:
        # A spoken reply takes far longer than a text one: its own kind gives it its own ETA.
        return "chat_speech" if prepared.job.speech.enabled else self.kind

    def run(self, prepared: PreparedChat, ctx: JobContext) -> ChatResult:
        return self.engine.chat(ctx, prepared.job, prepared.voice, stream=prepared.stream)

    async def render(self, result: ChatResult, usage: Usage) -> omni_pb2.ChatResponse:
        reply = omni_pb2.ChatResponse(
            text=result.text,
            finish_reason=finish_reason_proto(result.finish_reason),
            usage=job_protos.usage(
                usage, input_tokens=result.input_tokens, output_tokens=result.output_tokens
            ),
            seed=result.seed,
        )
        if result.sample_rate:
            data = await self.runtime.run_cpu(wav_bytes, result.audio, result.sample_rate)
            reply.audio.CopyFrom(
                media_pb2.Audio(
                    data=data,
                    format=media_pb2.AUDIO_FORMAT_WAV,
                    sample_rate_hz=result.sample_rate,
                    channels=1,
                )
            )
        return reply

    def stream_renderer(self, prepared: PreparedChat) -> StreamRenderer[ChatResult]:
        input_tokens = len(prepared.prompt.ids) if prepared.prompt is not None else 0
        return OmniChatStream(seed=prepared.job.sampling.seed, input_tokens=input_tokens)


# ---- voices ---------------------------------------------------------------------------------


class VoiceHandler(Inline):
    def __init__(self, runtime: ServiceRuntime, policy: MediaPolicy) -> None:
        super().__init__(runtime)
        self.engine = runtime.engine_as(OmniEngine)
        self.settings = runtime.settings_as(OmniSettings)
        self.policy = policy


class RegisterVoice(VoiceHandler):
    """Decodes the sample and writes it to the registry on the CPU pool; no model runs."""

    async def respond(
        self, message: omni_pb2.RegisterVoiceRequest, context: Any
    ) -> omni_pb2.RegisterVoiceResponse:
        self.runtime.ensure_ready()  # the registry is read while the model loads
        name = message.name.strip()
        if not 1 <= len(name) <= 64:
            raise InvalidArgument.for_field("name", "must be 1..64 characters")
        if not message.HasField("sample"):
            raise InvalidArgument.for_field("sample", "a speech sample is required")
        settings = self.settings
        limits = AudioLimits(
            settings.voice_max_seconds, settings.voice_max_bytes, settings.voice_min_seconds
        )
        samples = await self.runtime.run_cpu(
            decode_audio_message,
            message.sample,
            "sample",
            self.policy,
            limits,
            ("WAV", "FLAC", PCM),
        )
        voice = await self.runtime.run_cpu(
            self.engine.voices.register, name, samples, message.transcript
        )
        return omni_pb2.RegisterVoiceResponse(
            voice=omni_pb2.Voice(
                voice_id=voice.voice_id,
                name=voice.name,
                registered=True,
                sample_seconds=voice.sample_seconds,
            )
        )


class ListVoices(VoiceHandler):
    async def respond(
        self, message: omni_pb2.ListVoicesRequest, context: Any
    ) -> omni_pb2.ListVoicesResponse:
        self.runtime.ensure_ready()
        reply = omni_pb2.ListVoicesResponse()
        for speaker in self.engine.features().speakers:
            reply.voices.add(voice_id=speaker, name=speaker, registered=False)
        for voice in await self.runtime.run_cpu(self.engine.voices.list):
            reply.voices.add(
                voice_id=voice.voice_id,
                name=voice.name,
                registered=True,
                sample_seconds=voice.sample_seconds,
            )
        return reply


class DeleteVoice(VoiceHandler):
    async def respond(
        self, message: omni_pb2.DeleteVoiceRequest, context: Any
    ) -> omni_pb2.DeleteVoiceResponse:
        voice_id = message.voice_id
        if not voice_id:
            raise InvalidArgument.for_field("voice_id", "required")
        self.runtime.ensure_ready()
        if voice_id in self.engine.features().speakers:
            raise FailedPrecondition(f"{voice_id} is a built-in speaker and cannot be deleted")
        if not voice_id.startswith(VOICE_PREFIX):
            raise NotFound(f"voice {voice_id} is not registered")
        await self.runtime.run_cpu(self.engine.voices.delete, voice_id)
        return omni_pb2.DeleteVoiceResponse()


# ---- info -----------------------------------------------------------------------------------


class GetModelInfo(Inline):
    async def respond(
        self, message: omni_pb2.GetModelInfoRequest, context: Any
    ) -> omni_pb2.GetModelInfoResponse:
        settings = self.runtime.settings_as(OmniSettings)
        reply = omni_pb2.GetModelInfoResponse(model_info=self.runtime.model_info())
        reply.limits.max_new_tokens = settings.max_new_tokens
        reply.limits.max_audio_seconds = settings.max_audio_seconds
        reply.limits.max_images = settings.max_images
        reply.limits.max_sessions = settings.max_sessions
        try:
            self.runtime.ensure_ready()
        except ServingError:
            return reply  # while loading, only what the settings say
        features = self.runtime.engine_as(OmniEngine).features()
        reply.limits.max_context_tokens = features.max_context_tokens
        reply.supports_audio_input = features.audio_input
        reply.supports_speech_output = features.speech_output
        reply.supports_image_input = features.image_input
        reply.output_sample_rate_hz = features.output_sample_rate
        reply.session_modes.extend(_MODE_ENUMS[Mode(mode)] for mode in features.session_modes)
        reply.device_holding_session_modes.extend(
            _MODE_ENUMS[Mode(mode)] for mode in features.device_holding_modes
        )
        fill_speech_info(reply, self.runtime.engine_as(OmniEngine))
        return reply


def operations(runtime: ServiceRuntime) -> OperationTable:
    """Every method of mmserve.omni.v1.OmniService but GetJob and CancelJob (the runtime's)."""
    policy = media_policy(runtime)
    chat = ChatOperation(runtime, policy)
    return {
        "Chat": chat,
        "StreamChat": chat,
        **session_handlers(runtime, policy),
        "RegisterVoice": RegisterVoice(runtime, policy),
        "ListVoices": ListVoices(runtime, policy),
        "DeleteVoice": DeleteVoice(runtime, policy),
        "GetModelInfo": GetModelInfo(runtime),
        **recording_handlers(runtime),
        **speech_handlers(runtime, policy),
    }
