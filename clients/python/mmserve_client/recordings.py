"""Session recordings (sessions opened with record=True): what ListRecordings and GetRecording
answer, as plain values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmserve.omni.v1 import omni_pb2

# File name in the CLI and the SDK -> the proto's RecordingFile, and the file's usual suffix.
RECORDING_FILES = {
    "input": (omni_pb2.RECORDING_FILE_INPUT_AUDIO, ".wav"),
    "output": (omni_pb2.RECORDING_FILE_OUTPUT_AUDIO, ".wav"),
    "transcript": (omni_pb2.RECORDING_FILE_TRANSCRIPT, ".jsonl"),
    "meta": (omni_pb2.RECORDING_FILE_META, ".json"),
}
_MODES = {
    omni_pb2.SESSION_MODE_CHAT: "chat",
    omni_pb2.SESSION_MODE_HALF_DUPLEX: "half_duplex",
    omni_pb2.SESSION_MODE_AUDIO_DUPLEX: "audio_duplex",
    omni_pb2.SESSION_MODE_OMNI_DUPLEX: "omni_duplex",
}


@dataclass(frozen=True)
class Recording:
    """One kept recording: times are Unix seconds (`ended` 0 while the session is open)."""

    session_id: str
    mode: str
    started: float
    ended: float
    active: bool
    turns: int
    input_seconds: float
    output_seconds: float
    size_bytes: int
    path: str


@dataclass(frozen=True)
class RecordingPiece:
    """A byte range of a recording file (read on from `next_offset` until `eof`)."""

    data: bytes
    total_bytes: int
    next_offset: int
    eof: bool
    media_type: str


def recording_file(name: str) -> int:
    if name not in RECORDING_FILES:
        raise ValueError(f"file must be one of {', '.join(RECORDING_FILES)}, not {name!r}")
    return RECORDING_FILES[name][0]


def recordings_response(reply: omni_pb2.ListRecordingsResponse, _: Any = None) -> list[Recording]:
    return [
        Recording(
            session_id=r.session_id,
            mode=_MODES.get(r.mode, ""),
            started=r.started,
            ended=r.ended,
            active=r.active,
            turns=r.turns,
            input_seconds=r.input_seconds,
            output_seconds=r.output_seconds,
            size_bytes=r.size_bytes,
            path=r.path,
        )
        for r in reply.recordings
    ]


def recording_piece(reply: omni_pb2.GetRecordingResponse, _: Any = None) -> RecordingPiece:
    return RecordingPiece(
        reply.data, reply.total_bytes, reply.next_offset, reply.eof, reply.media_type
    )
