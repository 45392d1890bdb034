"""Images and audio from OpenAI's JSON (data URIs, base64) into the contracts' raw-bytes
messages. URLs are not fetched here: http(s) and file URLs travel as `uri` and the service
applies its own URI policy (off unless its operator allowed the prefix), so the rule is the
same whichever way a client calls."""

from __future__ import annotations

import base64
import binascii

from gateway.openai.errors import invalid
from mmserve.common.v1 import media_pb2

IMAGE_FORMATS = {
    "png": media_pb2.IMAGE_FORMAT_PNG,
    "jpeg": media_pb2.IMAGE_FORMAT_JPEG,
    "jpg": media_pb2.IMAGE_FORMAT_JPEG,
    "webp": media_pb2.IMAGE_FORMAT_WEBP,
}
IMAGE_NAMES = {
    media_pb2.IMAGE_FORMAT_PNG: "png",
    media_pb2.IMAGE_FORMAT_JPEG: "jpeg",
    media_pb2.IMAGE_FORMAT_WEBP: "webp",
}
AUDIO_FORMATS = {
    "wav": media_pb2.AUDIO_FORMAT_WAV,
    "mp3": media_pb2.AUDIO_FORMAT_MP3,
    "flac": media_pb2.AUDIO_FORMAT_FLAC,
    "ogg": media_pb2.AUDIO_FORMAT_OGG,
}
URL_SCHEMES = ("http://", "https://", "file://")
# OpenAI's voice names: clients hard-code them, so one the service lacks speaks with the
# service's default voice instead of failing.
OPENAI_VOICES = (
    "alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer",
    "verse", "marin", "cedar",
)  # fmt: skip


def voice_for(wanted: str, served: set[str]) -> str:
    """The service voice for an OpenAI `voice`: itself, or "" (the default) for an OpenAI
    name the service does not have."""
    return "" if wanted in OPENAI_VOICES and wanted not in served else wanted


def b64decode(text: str, param: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{param}: not valid base64", param) from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def is_data_uri(text: str) -> bool:
    return text[:5].lower() == "data:"


def data_uri_bytes(uri: str, param: str, kind: str) -> tuple[str, bytes]:
    """(media type, bytes) of a base64 data URI."""
    header, sep, payload = uri.partition(",")
    if not sep or not header.lower().endswith(";base64"):
        raise invalid(f"{param}: expected a data:{kind}/...;base64,<data> URI", param)
    media_type = header[5:].split(";", 1)[0].lower()
    if media_type and not media_type.startswith(kind + "/"):
        raise invalid(f"{param}: expected {kind} data, got {media_type!r}", param)
    return media_type, b64decode(payload, param)


def image_from_url(url: str, param: str) -> media_pb2.Image:
    if is_data_uri(url):
        media_type, data = data_uri_bytes(url, param, "image")
        name = media_type.removeprefix("image/")
        fmt = IMAGE_FORMATS.get(name, media_pb2.IMAGE_FORMAT_UNSPECIFIED)
        return media_pb2.Image(data=data, format=fmt)
    if url.lower().startswith(URL_SCHEMES):
        return media_pb2.Image(uri=url)
    raise invalid(
        f"{param}: expected a data: URI, or an http(s) or file URL the server allows", param
    )


def audio_from_base64(data: str, fmt: str, param: str) -> media_pb2.Audio:
    return media_pb2.Audio(
        data=b64decode(data, param + ".data"),
        format=AUDIO_FORMATS.get(fmt, media_pb2.AUDIO_FORMAT_UNSPECIFIED),
    )


def wav_to_pcm16(wav: bytes) -> bytes:
    """The samples of a 16-bit PCM WAV (the services' speech output), header dropped."""
    offset = 12
    while offset + 8 <= len(wav):
        chunk = wav[offset : offset + 4]
        size = int.from_bytes(wav[offset + 4 : offset + 8], "little")
        if chunk == b"data":
            return wav[offset + 8 : offset + 8 + size]
        offset += 8 + size + (size & 1)
    return b""
