"""mmserve.omni.v1 live-session RPCs: answered on the loop (a session queues one executor job per
turn, which SessionManager keeps), so each is an Inline handler, and StreamSessionEvents an
InlineStream over the session's event buffer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from mmserve.common.v1 import job_pb2, media_pb2
from mmserve.omni.v1 import omni_pb2
from services.omni.audio import PCM, AudioLimits
from services.omni.chat_stream import audio_chunk
from services.omni.config import OmniSettings
from services.omni.engine import OmniEngine
from services.omni.requests import MediaPolicy, decode_audio_message, speech_request
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
from services.runtime.app import ServiceRuntime
from services.runtime.calls import current_call
from services.runtime.chat.protos import finish_reason_proto, parse_sampling
from services.runtime.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from services.runtime.operations import Inline, InlineStream

STATES = {
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
# The proto's mode for each session mode (recordings name their mode by value).
MODE_ENUMS = {mode.value: enum for enum, mode in _MODES.items() if enum}
DEFAULT_INPUT_RATE = 16000


def caller() -> str:
    """The calling key's id (set by the interceptor; "" with auth off): sessions are bound to
    the key that opened them."""
    call = current_call()
    return call.key_id if call is not None else ""


class SessionHandler(Inline):
    """A session RPC: the engine, the settings and the one SessionManager of the process."""

    def __init__(self, runtime: ServiceRuntime, sessions: SessionManager) -> None:
        super().__init__(runtime)
        self.engine = runtime.engine_as(OmniEngine)
        self.settings = runtime.settings_as(OmniSettings)
        self.sessions = sessions

    def session(self, session_id: str) -> Session:
        if not session_id:
            raise InvalidArgument.for_field("session_id", "required")
        return self.sessions.get(session_id, caller())


class OpenSession(SessionHandler):
    async def respond(
        self, message: omni_pb2.OpenSessionRequest, context: Any
    ) -> omni_pb2.OpenSessionResponse:
        self.runtime.ensure_ready()
        mode = _MODES.get(message.mode)
        if mode is None:
            raise InvalidArgument.for_field("mode", "unknown session mode")
        features = self.engine.features()
        if mode.value not in features.session_modes:
            raise FailedPrecondition(
                f"mode {mode.value} needs "
                + ("image input" if mode is Mode.OMNI_DUPLEX else "audio input (an ASR model)")
                + f"; this model supports {', '.join(features.session_modes)}"
            )
        if message.record and not self.settings.recordings_enabled:
            raise PermissionDenied("session recordings are not enabled on this server")
        rate = message.input_sample_rate_hz or DEFAULT_INPUT_RATE
        if not 8000 <= rate <= 192000:
            raise InvalidArgument.for_field("input_sample_rate_hz", "must be within 8000..192000")
        speech = speech_request(message.speech, self.settings.chunk_ms)
        spec = {
            "system_prompt": message.system_prompt,
            "sampling": self.engine.resolve_sampling(parse_sampling(message.sampling)),
            "speech": speech,
            "voice": self.engine.resolve_voice(speech),
            "max_images": self.settings.max_images,
        }
        session = await self.sessions.open(spec, mode, message.record, rate, caller())
        return omni_pb2.OpenSessionResponse(
            session_id=session.session_id,
            pause_timeout_seconds=self.settings.session_pause_timeout_seconds,
            idle_timeout_seconds=self.settings.session_idle_timeout_seconds,
            orphan_timeout_seconds=self.settings.session_orphan_timeout_seconds,
            output_sample_rate_hz=features.output_sample_rate if speech.enabled else 0,
        )


class PushSessionInput(SessionHandler):
    def __init__(
        self, runtime: ServiceRuntime, sessions: SessionManager, policy: MediaPolicy
    ) -> None:
        super().__init__(runtime, sessions)
        self.policy = policy

    async def respond(
        self, message: omni_pb2.PushSessionInputRequest, context: Any
    ) -> omni_pb2.PushSessionInputResponse:
        session = self.session(message.session_id)
        self.sessions.touch(session)  # any push attempt is client activity (idle timeout)
        async with session.push_lock:
            if self.sessions.check_sequence(session, message.sequence):
                item = await self._input(session, message)
                await self.sessions.push(session, message.sequence, item, message.end_of_turn)
        return omni_pb2.PushSessionInputResponse(
            acked_sequence=max(0, session.acked), state=STATES[session.state]
        )

    async def _input(
        self, session: Session, message: omni_pb2.PushSessionInputRequest
    ) -> SessionInput | None:
        kind = message.WhichOneof("input")
        max_bytes = self.settings.session_max_chunk_bytes
        if kind == "text":
            return TextIn(message.text)
        if kind == "image":
            image = message.image
            if image.WhichOneof("source") == "data" and len(image.data) > max_bytes:
                raise InvalidArgument.for_field(
                    "image.data",
                    f"chunk is {len(image.data)} bytes; the limit is {max_bytes}",
                )
            return ImageIn(await self.runtime.run_cpu(self.runtime.load_image, image, "image"))
        if kind == "audio":
            audio = media_pb2.Audio()
            audio.CopyFrom(message.audio)
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
            limits = AudioLimits(self.settings.session_max_chunk_ms / 1000, max_bytes)
            samples = await self.runtime.run_cpu(
                decode_audio_message, audio, "audio", self.policy, limits, (PCM, "WAV")
            )
            return AudioIn(samples)
        if not message.end_of_turn:
            raise InvalidArgument.for_field("input", "set audio, image or text (or end_of_turn)")
        return None


class StreamSessionEvents(InlineStream):
    def __init__(self, runtime: ServiceRuntime, sessions: SessionManager) -> None:
        super().__init__(runtime)
        self.sessions = sessions

    async def stream(
        self, message: omni_pb2.StreamSessionEventsRequest, context: Any
    ) -> AsyncIterator[omni_pb2.StreamSessionEventsResponse]:
        if not message.session_id:
            raise InvalidArgument.for_field("session_id", "required")
        closed = self.sessions.closed_info(message.session_id, caller())
        if closed is not None:
            reply = omni_pb2.StreamSessionEventsResponse(session_id=message.session_id)
            reply.state.state = omni_pb2.SESSION_STATE_CLOSED
            reply.state.reason = closed[0]
            yield reply
            return
        session = self.sessions.get(message.session_id, caller())
        async for turn, event in self.sessions.events(session):
            reply = session_event(session, turn, event)
            if reply is not None:
                yield reply


def session_event(
    session: Session, turn: int, event: OutEvent
) -> omni_pb2.StreamSessionEventsResponse | None:
    reply = omni_pb2.StreamSessionEventsResponse(session_id=session.session_id, turn=turn)
    if isinstance(event, StateEvent):
        reply.state.state = STATES[event.state]
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
        reply.audio.CopyFrom(audio_chunk(event.chunk))
    elif isinstance(event, TurnDone):
        done = reply.turn_completed
        done.turn = event.turn
        done.finish_reason = finish_reason_proto(event.finish)
        done.usage.input_tokens = event.input_tokens
        done.usage.output_tokens = event.output_tokens
        done.usage.total_tokens = event.input_tokens + event.output_tokens
        done.usage.run_seconds = event.run_seconds
        done.usage.batch_size = 1
    else:
        return None
    return reply


class PauseSession(SessionHandler):
    async def respond(
        self, message: omni_pb2.PauseSessionRequest, context: Any
    ) -> omni_pb2.PauseSessionResponse:
        session = self.session(message.session_id)
        return omni_pb2.PauseSessionResponse(state=STATES[self.sessions.pause(session)])


class ResumeSession(SessionHandler):
    async def respond(
        self, message: omni_pb2.ResumeSessionRequest, context: Any
    ) -> omni_pb2.ResumeSessionResponse:
        session = self.session(message.session_id)
        return omni_pb2.ResumeSessionResponse(state=STATES[self.sessions.resume(session)])


class CloseSession(SessionHandler):
    async def respond(
        self, message: omni_pb2.CloseSessionRequest, context: Any
    ) -> omni_pb2.CloseSessionResponse:
        if not message.session_id:
            raise InvalidArgument.for_field("session_id", "required")
        if self.sessions.closed_info(message.session_id, caller()) is None:
            await self.sessions.close(self.session(message.session_id), "closed by client")
        closed = self.sessions.closed_info(message.session_id, caller())
        assert closed is not None
        _, turns, recording = closed
        return omni_pb2.CloseSessionResponse(turns=turns, recording_path=recording)


def session_handlers(
    runtime: ServiceRuntime, policy: MediaPolicy
) -> dict[str, Inline | InlineStream]:
    """The session RPCs of the table, sharing one SessionManager."""
    sessions = SessionManager(
        runtime, runtime.engine_as(OmniEngine), runtime.settings_as(OmniSettings)
    )
    return {
        "OpenSession": OpenSession(runtime, sessions),
        "PushSessionInput": PushSessionInput(runtime, sessions, policy),
        "StreamSessionEvents": StreamSessionEvents(runtime, sessions),
        "PauseSession": PauseSession(runtime, sessions),
        "ResumeSession": ResumeSession(runtime, sessions),
        "CloseSession": CloseSession(runtime, sessions),
    }
