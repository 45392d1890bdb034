"""mmserve.omni.v1 recording RPCs: ListRecordings and GetRecording read the recordings of
sessions opened with record=true back from the data dir (on the CPU pool; no model runs). A key
sees only its own sessions' recordings, as it sees only its own sessions."""

from __future__ import annotations

import uuid
from typing import Any

from mmserve.omni.v1 import omni_pb2
from services.omni.config import OmniSettings
from services.omni.recordings import list_recordings, read_recording
from services.omni.session_ops import MODE_ENUMS, caller
from services.runtime.app import ServiceRuntime
from services.runtime.errors import InvalidArgument
from services.runtime.operations import Inline

DEFAULT_READ_BYTES = 1024 * 1024
MAX_READ_BYTES = 4 * 1024 * 1024
_FILES = {
    omni_pb2.RECORDING_FILE_UNSPECIFIED: "input",
    omni_pb2.RECORDING_FILE_INPUT_AUDIO: "input",
    omni_pb2.RECORDING_FILE_OUTPUT_AUDIO: "output",
    omni_pb2.RECORDING_FILE_TRANSCRIPT: "transcript",
    omni_pb2.RECORDING_FILE_META: "meta",
}

_FORMATS = {
    "input": omni_pb2.RECORDING_FORMAT_WAV,
    "output": omni_pb2.RECORDING_FORMAT_WAV,
    "transcript": omni_pb2.RECORDING_FORMAT_JSON_LINES,
    "meta": omni_pb2.RECORDING_FORMAT_JSON,
}


class RecordingHandler(Inline):
    def __init__(self, runtime: ServiceRuntime) -> None:
        super().__init__(runtime)
        self.root = runtime.settings_as(OmniSettings).data_dir / "recordings"


class ListRecordings(RecordingHandler):
    async def respond(
        self, message: omni_pb2.ListRecordingsRequest, context: Any
    ) -> omni_pb2.ListRecordingsResponse:
        found = await self.runtime.run_cpu(list_recordings, self.root, caller())
        reply = omni_pb2.ListRecordingsResponse()
        for item in found:
            reply.recordings.add(
                session_id=item.session_id,
                mode=MODE_ENUMS.get(item.mode, omni_pb2.SESSION_MODE_UNSPECIFIED),
                started=item.started,
                ended=item.ended,
                active=item.ended == 0,
                turns=item.turns,
                input_seconds=item.input_seconds,
                output_seconds=item.output_seconds,
                size_bytes=item.size_bytes,
                path=item.path,
            )
        return reply


class GetRecording(RecordingHandler):
    async def respond(
        self, message: omni_pb2.GetRecordingRequest, context: Any
    ) -> omni_pb2.GetRecordingResponse:
        session_id = message.session_id
        if not session_id:
            raise InvalidArgument.for_field("session_id", "required")
        try:
            canonical = str(uuid.UUID(session_id))
        except ValueError:
            canonical = ""
        if canonical != session_id.lower():
            raise InvalidArgument.for_field("session_id", "must be a session id (a UUID)")
        file = _FILES.get(message.file)
        if file is None:
            raise InvalidArgument.for_field("file", f"unknown recording file {message.file}")
        size = message.max_bytes or DEFAULT_READ_BYTES
        if size > MAX_READ_BYTES:
            raise InvalidArgument.for_field("max_bytes", f"must be at most {MAX_READ_BYTES}")
        data, total, media_type = await self.runtime.run_cpu(
            read_recording, self.root, canonical, caller(), file, message.offset, size
        )
        end = min(message.offset, total) + len(data)
        return omni_pb2.GetRecordingResponse(
            data=data,
            total_bytes=total,
            next_offset=end,
            eof=end >= total,
            media_type=media_type,
            format=_FORMATS[file],
        )


def recording_handlers(runtime: ServiceRuntime) -> dict[str, Inline]:
    return {"ListRecordings": ListRecordings(runtime), "GetRecording": GetRecording(runtime)}
