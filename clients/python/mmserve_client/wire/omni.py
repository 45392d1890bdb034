"""Omni chat, live sessions and voices: requests and results (mmserve.omni.v1)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmserve.common.v1 import media_pb2
from mmserve.omni.v1 import omni_pb2

from ..audio import (
    AUDIO_SUFFIXES,
    AudioClip,
    AudioLike,
    from_audio_proto,
    looks_like_audio,
    to_audio_proto,
)
from ..events import (
    ChatEvent,
    Completed,
    SessionEvent,
    SessionStateChanged,
    Transcript,
    TurnCompleted,
)
from ..images import ImageLike, to_image_proto
from ..results import (
    ChatReply,
    PushAck,
    SessionClosed,
    SessionInfo,
    SessionState,
    Voice,
)
from ..speech import (
    SPEECH_FORMATS,
    Segment,
    SegmentDone,
    Speech,
    SpeechCompleted,
    SpeechEvent,
    SpeechPiece,
    SpeechStarted,
    Transcription,
    TranscriptionCompleted,
    TranscriptionEvent,
    TranscriptionStarted,
)
from .common import (
    MessageLike,
    audio_chunk,
    chat_messages,
    conversation,
    enum_value,
    finish_reason,
    heartbeat,
    queued,
    sampling,
    shared_event,
    text_delta,
    usage,
)

MODES = {
    "chat": omni_pb2.SESSION_MODE_CHAT,
    "half_duplex": omni_pb2.SESSION_MODE_HALF_DUPLEX,
    "audio_duplex": omni_pb2.SESSION_MODE_AUDIO_DUPLEX,
    "omni_duplex": omni_pb2.SESSION_MODE_OMNI_DUPLEX,
}


def is_audio(item: Any) -> bool:
    """Whether a content item is audio: clips, (samples, rate), audio protos, audio files by
    suffix and encoded bytes by their header."""
    if isinstance(item, AudioClip | tuple | media_pb2.Audio):
        return True
    if isinstance(item, os.PathLike):
        return Path(item).suffix.lower() in AUDIO_SUFFIXES
    if isinstance(item, bytes | bytearray | memoryview):
        return looks_like_audio(bytes(item))
    return False


def content_part(item: Any) -> omni_pb2.ContentPart:
    """A `str` is text; audio (see `is_audio`) is audio; anything else is an image."""
    if isinstance(item, omni_pb2.ContentPart):
        return item
    if isinstance(item, str):
        return omni_pb2.ContentPart(text=item)
    if is_audio(item):
        return omni_pb2.ContentPart(audio=to_audio_proto(item))
    return omni_pb2.ContentPart(image=to_image_proto(item))


def speech_options(speech: bool, voice: str, chunk_ms: int) -> omni_pb2.SpeechOptions:
    return omni_pb2.SpeechOptions(enabled=speech, voice=voice, chunk_ms=chunk_ms)


def chat_request(
    messages: str | Sequence[MessageLike],
    images: Sequence[ImageLike] = (),
    audio: Sequence[AudioLike] = (),
    system: str | None = None,
    speech: bool = False,
    voice: str = "",
    chunk_ms: int = 0,
    options: Mapping[str, Any] | None = None,
) -> omni_pb2.ChatRequest:
    # Audio parts are wrapped so a (samples, rate) tuple is never mistaken for two parts.
    media = [*images, *(a if is_audio(a) else to_audio_proto(a) for a in audio)]
    turns = conversation(messages, media, system)
    return omni_pb2.ChatRequest(
        messages=chat_messages(turns, omni_pb2.ChatMessage, content_part),  # type: ignore[arg-type]
        sampling=sampling(options or {}),
        speech=speech_options(speech, voice, chunk_ms),
    )


def chat_response(response: omni_pb2.ChatResponse, job_id: str) -> ChatReply:
    return ChatReply(
        job_id=job_id,
        text=response.text,
        finish_reason=finish_reason(response.finish_reason),
        usage=usage(response.usage),
        seed=response.seed,
        audio=from_audio_proto(response.audio) if response.HasField("audio") else None,
    )


def chat_event(response: omni_pb2.StreamChatResponse) -> ChatEvent | None:
    shared = shared_event(response)
    if shared is not None:
        return shared
    kind = response.WhichOneof("event")
    if kind == "delta":
        return text_delta(response.job_id, response.delta)
    if kind == "audio":
        return audio_chunk(response.job_id, response.audio)
    if kind == "completed":
        done = response.completed
        return Completed(
            response.job_id,
            finish_reason(done.finish_reason),
            usage(done.usage),
            done.seed,
            done.audio_seconds,
        )
    return None


# --- live sessions ---


def session_state(number: int) -> SessionState:
    return enum_value(SessionState, omni_pb2.SessionState, number, "SESSION_STATE_")


def open_session(
    mode: str = "chat",
    system_prompt: str = "",
    speech: bool = False,
    voice: str = "",
    chunk_ms: int = 0,
    input_sample_rate: int = 0,
    record: bool = False,
    options: Mapping[str, Any] | None = None,
) -> omni_pb2.OpenSessionRequest:
    if mode.lower() not in MODES:
        raise ValueError(f"unknown session mode {mode!r}; use {', '.join(MODES)}")
    return omni_pb2.OpenSessionRequest(
        mode=MODES[mode.lower()],
        system_prompt=system_prompt,
        sampling=sampling(options or {}),
        speech=speech_options(speech, voice, chunk_ms),
        input_sample_rate_hz=input_sample_rate,
        record=record,
    )


def session_info(response: omni_pb2.OpenSessionResponse, _: str) -> SessionInfo:
    return SessionInfo(
        response.session_id,
        response.pause_timeout_seconds,
        response.idle_timeout_seconds,
        response.output_sample_rate_hz,
    )


def push_input(
    session_id: str,
    sequence: int,
    audio: AudioLike | None = None,
    image: ImageLike | None = None,
    text: str | None = None,
    end_of_turn: bool = False,
) -> omni_pb2.PushSessionInputRequest:
    given = [x for x in (audio, image, text) if x is not None]
    if len(given) > 1:
        raise ValueError("push one of audio, image or text per chunk")
    request = omni_pb2.PushSessionInputRequest(
        session_id=session_id, sequence=sequence, end_of_turn=end_of_turn
    )
    if audio is not None:
        request.audio.CopyFrom(to_audio_proto(audio))
    elif image is not None:
        request.image.CopyFrom(to_image_proto(image))
    elif text is not None:
        request.text = text
    return request


def push_ack(response: omni_pb2.PushSessionInputResponse, _: str) -> PushAck:
    return PushAck(response.acked_sequence, session_state(response.state))


def state_response(response: Any, _: str) -> SessionState:
    """PauseSessionResponse or ResumeSessionResponse."""
    return session_state(response.state)


def session_closed(response: omni_pb2.CloseSessionResponse, _: str) -> SessionClosed:
    return SessionClosed(response.turns, response.recording_path)


def session_event(response: omni_pb2.StreamSessionEventsResponse) -> SessionEvent | None:
    kind = response.WhichOneof("event")
    event: Any
    if kind == "state":
        event = SessionStateChanged(session_state(response.state.state), response.state.reason)
    elif kind == "transcript":
        event = Transcript(response.transcript.text, response.transcript.is_final)
    elif kind == "delta":
        event = text_delta("", response.delta)
    elif kind == "audio":
        event = audio_chunk("", response.audio)
    elif kind == "turn_completed":
        done = response.turn_completed
        event = TurnCompleted(done.turn, finish_reason(done.finish_reason), usage(done.usage))
    elif kind == "queue":
        event = queued("", response.queue)
    elif kind == "heartbeat":
        event = heartbeat("", response.heartbeat)
    else:
        return None
    return SessionEvent(response.session_id, response.turn, event)


# --- voices ---


def voice(message: omni_pb2.Voice) -> Voice:
    return Voice(message.voice_id, message.name, message.registered, message.sample_seconds)


def register_voice(
    name: str, sample: AudioLike, transcript: str = ""
) -> omni_pb2.RegisterVoiceRequest:
    return omni_pb2.RegisterVoiceRequest(
        name=name, sample=to_audio_proto(sample), transcript=transcript
    )


def voice_response(response: omni_pb2.RegisterVoiceResponse, _: str) -> Voice:
    return voice(response.voice)


def voices_response(response: omni_pb2.ListVoicesResponse, _: str) -> list[Voice]:
    return [voice(v) for v in response.voices]


def nothing(_: Any, __: str) -> None:
    return None


# --- plain speech: Synthesize and Transcribe ---

_SPEECH_FORMAT_ENUMS = {
    "wav": omni_pb2.SPEECH_FORMAT_WAV,
    "pcm": omni_pb2.SPEECH_FORMAT_PCM_S16LE,
    "flac": omni_pb2.SPEECH_FORMAT_FLAC,
    "mp3": omni_pb2.SPEECH_FORMAT_MP3,
    "opus": omni_pb2.SPEECH_FORMAT_OPUS,
    "aac": omni_pb2.SPEECH_FORMAT_AAC,
}
_SPEECH_FORMAT_NAMES = {value: name for name, value in _SPEECH_FORMAT_ENUMS.items()}


def speech_format_name(value: int) -> str:
    return _SPEECH_FORMAT_NAMES.get(value, "wav")


def synthesize_request(
    text: str,
    voice: str = "",
    format: str = "wav",
    speed: float = 0.0,
    sample_rate: int = 0,
    chunk_ms: int = 0,
) -> omni_pb2.SynthesizeRequest:
    name = format.lower()
    if name not in _SPEECH_FORMAT_ENUMS:
        raise ValueError(f"unknown speech format {format!r}; use {', '.join(SPEECH_FORMATS)}")
    return omni_pb2.SynthesizeRequest(
        text=text,
        voice=voice,
        format=_SPEECH_FORMAT_ENUMS[name],
        speed=speed,
        sample_rate_hz=sample_rate,
        chunk_ms=chunk_ms,
    )


def speech_response(response: omni_pb2.SynthesizeResponse, job_id: str) -> Speech:
    return Speech(
        job_id=job_id,
        data=response.audio.data,
        format=speech_format_name(response.format),
        media_type=response.media_type,
        sample_rate=response.audio.sample_rate_hz,
        seconds=response.audio_seconds,
        voice=response.voice,
        usage=usage(response.usage),
    )


def speech_event(
    response: omni_pb2.StreamSynthesizeResponse,
) -> SpeechEvent | None:
    shared = shared_event(response)
    if shared is not None:
        return shared
    kind = response.WhichOneof("event")
    job_id = response.job_id
    if kind == "started":
        started = response.started
        return SpeechStarted(
            job_id,
            speech_format_name(started.format),
            started.sample_rate_hz,
            started.voice,
            started.media_type,
        )
    if kind == "audio":
        piece = response.audio
        return SpeechPiece(job_id, piece.data, piece.index, piece.end_seconds)
    if kind == "completed":
        done = response.completed
        return SpeechCompleted(job_id, done.audio_seconds, done.chunks, usage(done.usage))
    return None


def transcribe_request(
    audio: AudioLike, language: str = "", prompt: str = "", temperature: float = 0.0
) -> omni_pb2.TranscribeRequest:
    return omni_pb2.TranscribeRequest(
        audio=to_audio_proto(audio), language=language, prompt=prompt, temperature=temperature
    )


def segment(message: omni_pb2.TranscriptionSegment) -> Segment:
    return Segment(
        index=message.index,
        start=message.start_seconds,
        end=message.end_seconds,
        text=message.text,
        avg_logprob=message.avg_logprob,
        no_speech_prob=message.no_speech_prob,
        compression_ratio=message.compression_ratio,
        temperature=message.temperature,
        tokens=tuple(message.tokens),
        seek=message.seek,
    )


def transcription_response(response: omni_pb2.TranscribeResponse, job_id: str) -> Transcription:
    return Transcription(
        job_id=job_id,
        text=response.text,
        language=response.language,
        duration=response.duration_seconds,
        segments=tuple(segment(s) for s in response.segments),
        usage=usage(response.usage),
        language_probability=response.language_probability,
    )


def transcription_event(
    response: omni_pb2.StreamTranscribeResponse,
) -> TranscriptionEvent | None:
    shared = shared_event(response)
    if shared is not None:
        return shared
    kind = response.WhichOneof("event")
    job_id = response.job_id
    if kind == "started":
        started = response.started
        return TranscriptionStarted(
            job_id, started.language, started.duration_seconds, started.language_probability
        )
    if kind == "segment":
        return SegmentDone(job_id, segment(response.segment))
    if kind == "completed":
        done = response.completed
        return TranscriptionCompleted(job_id, done.text, done.segments, usage(done.usage))
    return None
