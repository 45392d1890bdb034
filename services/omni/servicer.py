"""mmserve.omni.v1.OmniService: protobuf <-> plain Python. Requests are validated and decoded
in the CPU pool, model work goes through the runtime's executor, and engine events are mapped
back to the contract's messages."""

from __future__ import annotations

from typing import Any

import grpc

from mmserve.common.v1 import chat_pb2, job_pb2, media_pb2
from mmserve.omni.v1 import omni_pb2, omni_pb2_grpc
from services.omni.audio import PCM, AudioLimits, wav_bytes
from services.omni.config import OmniSettings
from services.omni.engine import OmniEngine
from services.omni.requests import (
    MediaPolicy,
    decode_audio_message,
    decode_image_message,
    parse_messages,
    parse_sampling,
    speech_chunk_ms,
)
from services.omni.session_runner import (
    AudioIn,
    Heard,
    ImageIn,
    Mode,
    ReplyAudio,
    ReplyText,
    SessionInput,
    TextIn,
    TurnDone,
)
from services.omni.sessions import (
    HeartbeatEvent,
    OutEvent,
    QueueEvent,
    Session,
    SessionManager,
    State,
    StateEvent,
)
from services.omni.turns import AudioOut, ChatJob, ChatResult, FinishReason, SpeechRequest, TextOut
from services.omni.voices import VOICE_PREFIX
from services.runtime import job_protos
from services.runtime.app import JobsServicerMixin, ServiceRuntime, fill_job_event
from services.runtime.calls import current_call
from services.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ServingError,
)
from services.runtime.executor import JobFinished, JobOutput, JobUsage

_FINISH = {
    FinishReason.STOP: chat_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: chat_pb2.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: chat_pb2.FINISH_REASON_CANCELLED,
}
_STATES = {
    State.LISTENING: omni_pb2.SESSION_STATE_LISTENING,
    State.RESPONDING: omni_pb2.SESSION_STATE_RESPONDING,
    State.PAUSED: omni_pb2.SESSION_STATE_PAUSED,
    State.CLOSED: omni_pb2.SESSION_STATE_CLOSED,
}
_MODES = {
    omni_pb2.SESSION_MODE_UNSPECIFIED: Mode.CHAT,
    omni_pb2.SESSION_MODE_CHAT: Mode.CHAT,
    omni_pb2.SESSION_MODE_HALF_DUPLEX: Mode.HALF_DUPLEX,
    omni_pb2.SESSION_MODE_AUDIO_DUPLEX: Mode.AUDIO_DUPLEX,
    omni_pb2.SESSION_MODE_OMNI_DUPLEX: Mode.OMNI_DUPLEX,
}
_MODE_ENUMS = {
    Mode.CHAT: omni_pb2.SESSION_MODE_CHAT,
    Mode.HALF_DUPLEX: omni_pb2.SESSION_MODE_HALF_DUPLEX,
    Mode.AUDIO_DUPLEX: omni_pb2.SESSION_MODE_AUDIO_DUPLEX,
    Mode.OMNI_DUPLEX: omni_pb2.SESSION_MODE_OMNI_DUPLEX,
}
DEFAULT_INPUT_RATE = 16000


def _audio_chunk(chunk: AudioOut) -> omni_pb2.AudioChunk:
    return omni_pb2.AudioChunk(
        audio=media_pb2.Audio(
            data=chunk.pcm,
            format=media_pb2.AUDIO_FORMAT_PCM_S16LE,
            sample_rate_hz=chunk.sample_rate,
            channels=1,
        ),
        index=chunk.index,
    )


def _caller() -> str:
    """The calling key's id (set by the interceptor; "" with auth off): sessions are bound to
    the key that opened them."""
    call = current_call()
    return call.key_id if call is not None else ""


def _usage(result: ChatResult, usage: JobUsage) -> job_pb2.Usage:
    return job_protos.usage(
        usage, input_tokens=result.input_tokens, output_tokens=result.output_tokens
    )


class OmniServicer(JobsServicerMixin, omni_pb2_grpc.OmniServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        self.engine: OmniEngine = runtime.engine  # type: ignore[assignment]
        self.settings: OmniSettings = runtime.settings  # type: ignore[assignment]
        self.policy = MediaPolicy.from_settings(self.settings)
        self.sessions = SessionManager(runtime, self.engine, self.settings)

    # ---- chat -----------------------------------------------------------------------------

    async def _chat_job(self, request: omni_pb2.ChatRequest) -> tuple[ChatJob, Any, str]:
        self.runtime.ensure_ready()
        sampling = self.engine.resolve_sampling(parse_sampling(request.sampling))
        speech = SpeechRequest(
            enabled=request.speech.enabled,
            voice=request.speech.voice,
            chunk_ms=speech_chunk_ms(request.speech, self.settings.chunk_ms),
        )
        voice = self.engine.resolve_voice(speech)
        messages = await self.runtime.run_cpu(
            parse_messages, list(request.messages), self.policy, self.settings.max_messages
        )
        self.engine.check_inputs(messages)
        kind = "chat_speech" if speech.enabled else "chat"
        return ChatJob(messages, sampling, speech), voice, kind

    async def Chat(self, request: omni_pb2.ChatRequest, context: Any) -> omni_pb2.ChatResponse:
        job, voice, kind = await self._chat_job(request)
        result, usage = await self.runtime.run_job(
            context, kind, lambda ctx: self.engine.chat(ctx, job, voice, stream=False)
        )
        reply = omni_pb2.ChatResponse(
            text=result.text,
            finish_reason=_FINISH[result.finish],
            usage=_usage(result, usage),
            seed=result.seed,
        )
        if job.speech.enabled:
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

    async def StreamChat(self, request: omni_pb2.ChatRequest, context: Any) -> Any:
        job, voice, kind = await self._chat_job(request)
        stream = self.runtime.stream_job(
            context, kind, lambda ctx: self.engine.chat(ctx, job, voice, stream=True)
        )
        async for job_id, event in stream:
            reply = omni_pb2.StreamChatResponse()
            if fill_job_event(reply, job_id, event):
                pass
            elif isinstance(event, JobOutput) and isinstance(event.payload, TextOut):
                reply.delta.text = event.payload.text
                reply.delta.output_tokens = event.payload.output_tokens
            elif isinstance(event, JobOutput) and isinstance(event.payload, AudioOut):
                reply.audio.CopyFrom(_audio_chunk(event.payload))
            elif isinstance(event, JobFinished):
                result: ChatResult = event.result
                reply.completed.finish_reason = _FINISH[result.finish]
                reply.completed.usage.CopyFrom(_usage(result, event.usage))
                reply.completed.seed = result.seed
                reply.completed.audio_seconds = result.audio_seconds
            else:
                continue
            yield reply

    # ---- sessions -------------------------------------------------------------------------

    def _session(self, session_id: str) -> Session:
        if not session_id:
            raise InvalidArgument.for_field("session_id", "required")
        return self.sessions.get(session_id, _caller())

    async def OpenSession(
        self, request: omni_pb2.OpenSessionRequest, context: Any
    ) -> omni_pb2.OpenSessionResponse:
        self.runtime.ensure_ready()
        mode = _MODES.get(request.mode)
        if mode is None:
            raise InvalidArgument.for_field("mode", "unknown session mode")
        features = self.engine.features()
        if mode.value not in features.session_modes:
            raise FailedPrecondition(
                f"mode {mode.value} needs "
                + ("image input" if mode is Mode.OMNI_DUPLEX else "audio input (an ASR model)")
                + f"; this model supports {', '.join(features.session_modes)}"
            )
        if request.record and not self.settings.recordings_enabled:
            raise PermissionDenied("session recordings are not enabled on this server")
        rate = request.input_sample_rate_hz or DEFAULT_INPUT_RATE
        if not 8000 <= rate <= 192000:
            raise InvalidArgument.for_field("input_sample_rate_hz", "must be within 8000..192000")
        speech = SpeechRequest(
            enabled=request.speech.enabled,
            voice=request.speech.voice,
            chunk_ms=speech_chunk_ms(request.speech, self.settings.chunk_ms),
        )
        spec = {
            "system_prompt": request.system_prompt,
            "sampling": self.engine.resolve_sampling(parse_sampling(request.sampling)),
            "speech": speech,
            "voice": self.engine.resolve_voice(speech),
            "max_images": self.settings.max_images,
        }
        session = await self.sessions.open(spec, mode, request.record, rate, _caller())
        return omni_pb2.OpenSessionResponse(
            session_id=session.session_id,
            pause_timeout_seconds=self.settings.session_pause_timeout_seconds,
            idle_timeout_seconds=self.settings.session_idle_timeout_seconds,
            output_sample_rate_hz=features.output_sample_rate if speech.enabled else 0,
        )

    async def PushSessionInput(
        self, request: omni_pb2.PushSessionInputRequest, context: Any
    ) -> omni_pb2.PushSessionInputResponse:
        session = self._session(request.session_id)
        self.sessions.touch(session)  # any push attempt is client activity (idle timeout)
        async with session.push_lock:
            if self.sessions.check_sequence(session, request.sequence):
                item = await self._session_input(session, request)
                self.sessions.push(session, request.sequence, item, request.end_of_turn)
        return omni_pb2.PushSessionInputResponse(
            acked_sequence=max(0, session.acked), state=_STATES[session.state]
        )

    async def _session_input(
        self, session: Session, request: omni_pb2.PushSessionInputRequest
    ) -> SessionInput | None:
        kind = request.WhichOneof("input")
        if kind == "text":
            return TextIn(request.text)
        if kind == "image":
            image = request.image
            if image.WhichOneof("source") == "data" and (
                len(image.data) > self.settings.session_max_chunk_bytes
            ):
                raise InvalidArgument.for_field(
                    "image.data",
                    f"chunk is {len(image.data)} bytes; "
                    f"the limit is {self.settings.session_max_chunk_bytes}",
                )
            return ImageIn(
                await self.runtime.run_cpu(decode_image_message, image, "image", self.policy)
            )
        if kind == "audio":
            audio = media_pb2.Audio()
            audio.CopyFrom(request.audio)
            if audio.format == media_pb2.AUDIO_FORMAT_PCM_S16LE:
                if audio.sample_rate_hz not in (0, session.input_rate):
                    raise InvalidArgument.for_field(
                        "audio.sample_rate_hz",
                        f"the session takes {session.input_rate} Hz (input_sample_rate_hz)",
                    )
                audio.sample_rate_hz = session.input_rate
                if audio.channels not in (0, 1):
                    raise InvalidArgument.for_field("audio.channels", "session audio is mono")
                audio.channels = 1
            limits = AudioLimits(
                self.settings.session_max_chunk_ms / 1000, self.settings.session_max_chunk_bytes
            )
            samples = await self.runtime.run_cpu(
                decode_audio_message, audio, "audio", self.policy, limits, (PCM, "WAV")
            )
            return AudioIn(samples)
        if not request.end_of_turn:
            raise InvalidArgument.for_field("input", "set audio, image or text (or end_of_turn)")
        return None

    async def StreamSessionEvents(
        self, request: omni_pb2.StreamSessionEventsRequest, context: Any
    ) -> Any:
        if not request.session_id:
            raise InvalidArgument.for_field("session_id", "required")
        closed = self.sessions.closed_info(request.session_id, _caller())
        if closed is not None:
            reply = omni_pb2.StreamSessionEventsResponse(session_id=request.session_id)
            reply.state.state = omni_pb2.SESSION_STATE_CLOSED
            reply.state.reason = closed[0]
            yield reply
            return
        session = self._session(request.session_id)
        async for turn, event in self.sessions.events(session):
            reply = self._session_event(session, turn, event)
            if reply is not None:
                yield reply

    def _session_event(
        self, session: Session, turn: int, event: OutEvent
    ) -> omni_pb2.StreamSessionEventsResponse | None:
        reply = omni_pb2.StreamSessionEventsResponse(session_id=session.session_id, turn=turn)
        if isinstance(event, StateEvent):
            reply.state.state = _STATES[event.state]
            reply.state.reason = event.reason
        elif isinstance(event, QueueEvent):
            reply.queue.position = event.position
            reply.queue.queue_length = event.queue_length
            reply.queue.eta_seconds = event.eta_seconds
        elif isinstance(event, HeartbeatEvent):
            reply.heartbeat.state = (
                job_pb2.JOB_STATE_QUEUED if event.queued else job_pb2.JOB_STATE_RUNNING
            )
            reply.heartbeat.elapsed_seconds = event.elapsed_seconds
        elif isinstance(event, Heard):
            reply.transcript.text = event.text
            reply.transcript.is_final = event.final
        elif isinstance(event, ReplyText):
            reply.delta.text = event.delta.text
            reply.delta.output_tokens = event.delta.output_tokens
        elif isinstance(event, ReplyAudio):
            reply.audio.CopyFrom(_audio_chunk(event.chunk))
        elif isinstance(event, TurnDone):
            done = reply.turn_completed
            done.turn = event.turn
            done.finish_reason = _FINISH[event.finish]
            done.usage.input_tokens = event.input_tokens
            done.usage.output_tokens = event.output_tokens
            done.usage.total_tokens = event.input_tokens + event.output_tokens
            done.usage.run_seconds = event.run_seconds
            done.usage.batch_size = 1
        else:
            return None
        return reply

    async def PauseSession(
        self, request: omni_pb2.PauseSessionRequest, context: Any
    ) -> omni_pb2.PauseSessionResponse:
        session = self._session(request.session_id)
        return omni_pb2.PauseSessionResponse(state=_STATES[self.sessions.pause(session)])

    async def ResumeSession(
        self, request: omni_pb2.ResumeSessionRequest, context: Any
    ) -> omni_pb2.ResumeSessionResponse:
        session = self._session(request.session_id)
        return omni_pb2.ResumeSessionResponse(state=_STATES[self.sessions.resume(session)])

    async def CloseSession(
        self, request: omni_pb2.CloseSessionRequest, context: Any
    ) -> omni_pb2.CloseSessionResponse:
        if not request.session_id:
            raise InvalidArgument.for_field("session_id", "required")
        if self.sessions.closed_info(request.session_id, _caller()) is None:
            await self.sessions.close(self._session(request.session_id), "closed by client")
        closed = self.sessions.closed_info(request.session_id, _caller())
        assert closed is not None
        _, turns, recording = closed
        return omni_pb2.CloseSessionResponse(turns=turns, recording_path=recording)

    # ---- voices ---------------------------------------------------------------------------

    async def RegisterVoice(
        self, request: omni_pb2.RegisterVoiceRequest, context: Any
    ) -> omni_pb2.RegisterVoiceResponse:
        self.runtime.ensure_ready()  # the registry is read while the model loads
        name = request.name.strip()
        if not 1 <= len(name) <= 64:
            raise InvalidArgument.for_field("name", "must be 1..64 characters")
        if not request.HasField("sample"):
            raise InvalidArgument.for_field("sample", "a speech sample is required")
        settings = self.settings
        limits = AudioLimits(
            settings.voice_max_seconds, settings.voice_max_bytes, settings.voice_min_seconds
        )
        samples = await self.runtime.run_cpu(
            decode_audio_message,
            request.sample,
            "sample",
            self.policy,
            limits,
            ("WAV", "FLAC", PCM),
        )
        voice = await self.runtime.run_cpu(
            self.engine.voices.register, name, samples, request.transcript
        )
        return omni_pb2.RegisterVoiceResponse(
            voice=omni_pb2.Voice(
                voice_id=voice.voice_id,
                name=voice.name,
                registered=True,
                sample_seconds=voice.sample_seconds,
            )
        )

    async def ListVoices(
        self, request: omni_pb2.ListVoicesRequest, context: Any
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

    async def DeleteVoice(
        self, request: omni_pb2.DeleteVoiceRequest, context: Any
    ) -> omni_pb2.DeleteVoiceResponse:
        voice_id = request.voice_id
        if not voice_id:
            raise InvalidArgument.for_field("voice_id", "required")
        self.runtime.ensure_ready()
        if voice_id in self.engine.features().speakers:
            raise FailedPrecondition(f"{voice_id} is a built-in speaker and cannot be deleted")
        if not voice_id.startswith(VOICE_PREFIX):
            raise NotFound(f"voice {voice_id} is not registered")
        await self.runtime.run_cpu(self.engine.voices.delete, voice_id)
        return omni_pb2.DeleteVoiceResponse()

    # ---- info -----------------------------------------------------------------------------

    async def GetModelInfo(
        self, request: omni_pb2.GetModelInfoRequest, context: Any
    ) -> omni_pb2.GetModelInfoResponse:
        settings = self.settings
        reply = omni_pb2.GetModelInfoResponse(model_info=self.runtime.model_info())
        reply.limits.max_new_tokens = settings.max_new_tokens
        reply.limits.max_audio_seconds = settings.max_audio_seconds
        reply.limits.max_images = settings.max_images
        reply.limits.max_sessions = settings.max_sessions
        try:
            self.runtime.ensure_ready()
        except ServingError:
            return reply  # while loading, only what the settings say
        features = self.engine.features()
        reply.limits.max_context_tokens = features.max_context_tokens
        reply.supports_audio_input = features.audio_input
        reply.supports_speech_output = features.speech_output
        reply.supports_image_input = features.image_input
        reply.output_sample_rate_hz = features.output_sample_rate
        reply.session_modes.extend(_MODE_ENUMS[Mode(mode)] for mode in features.session_modes)
        return reply


def add_servicers(server: grpc.aio.Server, runtime: ServiceRuntime) -> None:
    omni_pb2_grpc.add_OmniServiceServicer_to_server(OmniServicer(runtime), server)
