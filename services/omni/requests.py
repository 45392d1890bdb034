"""Protobuf requests -> validated plain `turns` objects. Checking a request's structure is cheap
and happens on the loop (`check_messages`); decoding its images and audio (`decode_messages`)
runs in the CPU pool, never on the device thread. Every problem is an InvalidArgument naming
the request field."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from mmserve.common.v1 import media_pb2
from mmserve.omni.v1 import omni_pb2
from services.omni.audio import PCM, AudioLimits, decode_audio, sniff_format
from services.omni.turns import AudioPart, FloatAudio, SpeechRequest
from services.runtime.chat.messages import ContentPart, ImagePart, Message, Role, TextPart
from services.runtime.chat.protos import ROLES
from services.runtime.errors import InvalidArgument
from services.runtime.media import UriPolicy, media_bytes

AUDIO_FORMATS = {
    media_pb2.AUDIO_FORMAT_UNSPECIFIED: None,
    media_pb2.AUDIO_FORMAT_WAV: "WAV",
    media_pb2.AUDIO_FORMAT_FLAC: "FLAC",
    media_pb2.AUDIO_FORMAT_PCM_S16LE: PCM,
    media_pb2.AUDIO_FORMAT_OGG: "OGG",
    media_pb2.AUDIO_FORMAT_MP3: "MP3",
}

LoadImage = Callable[[media_pb2.Image, str], Image.Image]


@dataclass(frozen=True)
class MediaPolicy:
    """What the operator allows for media: URI prefixes, audio limits, and the runtime's image
    decoding (its shared limits, aspect ratio included)."""

    uris: UriPolicy
    audio: AudioLimits
    load_image: LoadImage


def audio_format(audio: media_pb2.Audio, field: str) -> str | None:
    try:
        return AUDIO_FORMATS[audio.format]
    except KeyError:
        raise InvalidArgument.for_field(f"{field}.format", "unknown audio format") from None


def decode_audio_message(
    audio: media_pb2.Audio,
    field: str,
    policy: MediaPolicy,
    limits: AudioLimits | None = None,
    allowed: tuple[str | None, ...] | None = None,
) -> FloatAudio:
    """16 kHz mono float samples of an Audio message (bytes or an allowed URI)."""
    fmt = audio_format(audio, field)
    data = media_bytes(audio, field=field, policy=policy.uris, kind="audio")
    if allowed is not None and (fmt or sniff_format(data)) not in allowed:
        names = ", ".join(f for f in allowed if f)
        raise InvalidArgument.for_field(f"{field}.format", f"must be one of {names}")
    return decode_audio(
        data,
        fmt,
        field=field,
        limits=limits or policy.audio,
        sample_rate=audio.sample_rate_hz,
        channels=audio.channels,
    )


def check_messages(
    messages: Sequence[omni_pb2.ChatMessage], max_messages: int, max_images: int
) -> None:
    """Checks roles, parts and counts without decoding anything (cheap, on the loop)."""
    if not messages:
        raise InvalidArgument.for_field("messages", "at least one message is needed")
    if len(messages) > max_messages:
        raise InvalidArgument.for_field("messages", f"at most {max_messages} messages")
    images = 0
    for index, message in enumerate(messages):
        field = f"messages[{index}]"
        role = ROLES.get(message.role)
        if role is None:
            raise InvalidArgument.for_field(f"{field}.role", "must be SYSTEM, USER or ASSISTANT")
        if role is Role.SYSTEM and index != 0:
            raise InvalidArgument.for_field(f"{field}.role", "SYSTEM only as the first message")
        if not message.content:
            raise InvalidArgument.for_field(f"{field}.content", "at least one part is needed")
        for p_index, part in enumerate(message.content):
            where = f"{field}.content[{p_index}]"
            kind = part.WhichOneof("part")
            if kind is None:
                raise InvalidArgument.for_field(where, "set one of text, image or audio")
            if kind != "text" and role is not Role.USER:
                raise InvalidArgument.for_field(where, "images and audio only in USER messages")
            if kind == "image":
                images += 1
                if images > max_images:
                    raise InvalidArgument.for_field(
                        where, f"at most {max_images} images per request"
                    )
    if ROLES[messages[-1].role] is not Role.USER:
        raise InvalidArgument.for_field(
            f"messages[{len(messages) - 1}].role", "the last message must be from USER"
        )


def decode_messages(
    messages: Sequence[omni_pb2.ChatMessage], policy: MediaPolicy
) -> tuple[Message, ...]:
    """Decodes the media of messages `check_messages` passed; blocking (run it in the CPU
    pool)."""
    result: list[Message] = []
    for index, message in enumerate(messages):
        parts: list[ContentPart] = []
        for p_index, part in enumerate(message.content):
            where = f"messages[{index}].content[{p_index}]"
            kind = part.WhichOneof("part")
            if kind == "text":
                parts.append(TextPart(part.text))
            elif kind == "image":
                parts.append(ImagePart(policy.load_image(part.image, f"{where}.image")))
            else:
                parts.append(AudioPart(decode_audio_message(part.audio, f"{where}.audio", policy)))
        result.append(Message(ROLES[message.role], tuple(parts)))
    return tuple(result)


def speech_request(options: omni_pb2.SpeechOptions, default_chunk_ms: int) -> SpeechRequest:
    """The speech a Chat or OpenSession request asks for; chunk_ms 0 takes the default."""
    chunk_ms = options.chunk_ms or default_chunk_ms
    if options.chunk_ms and not 20 <= options.chunk_ms <= 5000:
        raise InvalidArgument.for_field("speech.chunk_ms", "must be within 20..5000")
    return SpeechRequest(enabled=options.enabled, voice=options.voice, chunk_ms=chunk_ms)
