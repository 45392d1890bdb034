"""Protobuf requests -> validated plain `turns` objects. Decoding images and audio happens here,
so the servicer runs these functions in the CPU pool, never on the device thread; every problem
is an InvalidArgument naming the request field."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from mmserve.common.v1 import chat_pb2, media_pb2
from mmserve.omni.v1 import omni_pb2
from services.omni.audio import PCM, AudioLimits, decode_audio, sniff_format
from services.omni.config import OmniSettings
from services.omni.engine import SamplingInput
from services.omni.turns import AudioPart, FloatAudio, ImagePart, Message, Part, Role, TextPart
from services.runtime.errors import InvalidArgument
from services.runtime.images import ImageLimits
from services.runtime.media import UriPolicy, load_image, media_bytes

MAX_STOP_STRINGS = 16
# Qwen's smart_resize (Qwen2.5-Omni's processor) raises on images more elongated than this,
# on the device thread, which clients saw as INTERNAL; refused up front, naming the field.
MAX_ASPECT_RATIO = 200
MAX_STOP_BYTES = 256

AUDIO_FORMATS = {
    media_pb2.AUDIO_FORMAT_UNSPECIFIED: None,
    media_pb2.AUDIO_FORMAT_WAV: "WAV",
    media_pb2.AUDIO_FORMAT_FLAC: "FLAC",
    media_pb2.AUDIO_FORMAT_PCM_S16LE: PCM,
    media_pb2.AUDIO_FORMAT_OGG: "OGG",
    media_pb2.AUDIO_FORMAT_MP3: "MP3",
}
_ROLES = {
    chat_pb2.ROLE_SYSTEM: Role.SYSTEM,
    chat_pb2.ROLE_USER: Role.USER,
    chat_pb2.ROLE_ASSISTANT: Role.ASSISTANT,
}


@dataclass(frozen=True)
class MediaPolicy:
    """What the operator allows for media: URI prefixes, image and audio limits."""

    uris: UriPolicy
    images: ImageLimits
    audio: AudioLimits
    max_images: int

    @classmethod
    def from_settings(cls, settings: OmniSettings) -> MediaPolicy:
        return cls(
            uris=UriPolicy(tuple(settings.allowed_uri_prefixes)),
            images=ImageLimits(
                max_pixels=settings.max_image_pixels,
                max_side=settings.max_image_side,
                max_aspect_ratio=MAX_ASPECT_RATIO,
            ),
            audio=AudioLimits(settings.max_audio_seconds, settings.max_audio_bytes),
            max_images=settings.max_images,
        )


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


def decode_image_message(image: media_pb2.Image, field: str, policy: MediaPolicy) -> Image.Image:
    return load_image(image, field=field, policy=policy.uris, limits=policy.images)


def parse_messages(
    messages: list[omni_pb2.ChatMessage], policy: MediaPolicy, max_messages: int
) -> tuple[Message, ...]:
    """Checks roles and parts, decodes media; blocking (run it in the CPU pool)."""
    if not messages:
        raise InvalidArgument.for_field("messages", "at least one message is needed")
    if len(messages) > max_messages:
        raise InvalidArgument.for_field("messages", f"at most {max_messages} messages")
    result: list[Message] = []
    images = 0
    for index, message in enumerate(messages):
        field = f"messages[{index}]"
        role = _ROLES.get(message.role)
        if role is None:
            raise InvalidArgument.for_field(f"{field}.role", "must be SYSTEM, USER or ASSISTANT")
        if role is Role.SYSTEM and index != 0:
            raise InvalidArgument.for_field(f"{field}.role", "SYSTEM only as the first message")
        if not message.content:
            raise InvalidArgument.for_field(f"{field}.content", "at least one part is needed")
        parts: list[Part] = []
        for p_index, part in enumerate(message.content):
            where = f"{field}.content[{p_index}]"
            kind = part.WhichOneof("part")
            if kind is None:
                raise InvalidArgument.for_field(where, "set one of text, image or audio")
            if kind != "text" and role is not Role.USER:
                raise InvalidArgument.for_field(where, "images and audio only in USER messages")
            if kind == "text":
                parts.append(TextPart(part.text))
            elif kind == "image":
                images += 1
                if images > policy.max_images:
                    raise InvalidArgument.for_field(
                        where, f"at most {policy.max_images} images per request"
                    )
                parts.append(ImagePart(decode_image_message(part.image, f"{where}.image", policy)))
            else:
                parts.append(AudioPart(decode_audio_message(part.audio, f"{where}.audio", policy)))
        result.append(Message(role, tuple(parts)))
    if result[-1].role is not Role.USER:
        raise InvalidArgument.for_field(
            f"messages[{len(result) - 1}].role", "the last message must be from USER"
        )
    return tuple(result)


def parse_sampling(sampling: chat_pb2.SamplingParams, field: str = "sampling") -> SamplingInput:
    def has(name: str) -> bool:
        return sampling.HasField(name)

    if has("max_new_tokens") and sampling.max_new_tokens < 1:
        raise InvalidArgument.for_field(f"{field}.max_new_tokens", "must be >= 1")
    if has("temperature") and not 0.0 <= sampling.temperature <= 2.0:
        raise InvalidArgument.for_field(f"{field}.temperature", "must be within [0, 2]")
    if has("top_p") and not 0.0 < sampling.top_p <= 1.0:
        raise InvalidArgument.for_field(f"{field}.top_p", "must be within (0, 1]")
    if has("repetition_penalty") and not sampling.repetition_penalty > 0:
        raise InvalidArgument.for_field(f"{field}.repetition_penalty", "must be > 0")
    if len(sampling.stop) > MAX_STOP_STRINGS:
        raise InvalidArgument.for_field(f"{field}.stop", f"at most {MAX_STOP_STRINGS} strings")
    for index, stop in enumerate(sampling.stop):
        if not 1 <= len(stop.encode("utf-8")) <= MAX_STOP_BYTES:
            raise InvalidArgument.for_field(
                f"{field}.stop[{index}]", f"must be 1..{MAX_STOP_BYTES} bytes"
            )
    return SamplingInput(
        max_new_tokens=sampling.max_new_tokens if has("max_new_tokens") else None,
        temperature=sampling.temperature if has("temperature") else None,
        top_p=sampling.top_p if has("top_p") else None,
        top_k=sampling.top_k if has("top_k") else None,
        repetition_penalty=sampling.repetition_penalty if has("repetition_penalty") else None,
        seed=sampling.seed if has("seed") else None,
        stop=tuple(sampling.stop),
    )


def speech_chunk_ms(speech: omni_pb2.SpeechOptions, default: int, field: str = "speech") -> int:
    if speech.chunk_ms == 0:
        return default
    if not 20 <= speech.chunk_ms <= 5000:
        raise InvalidArgument.for_field(f"{field}.chunk_ms", "must be within 20..5000")
    return speech.chunk_ms
