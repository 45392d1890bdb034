"""omni's StreamChat replies: the runtime's chat stream renderer plus speech (audio chunks as
they are made, and the seconds of speech in the last event)."""

from __future__ import annotations

from typing import Any

from mmserve.common.v1 import job_pb2, media_pb2
from mmserve.omni.v1 import omni_pb2
from services.omni.turns import AudioOut, ChatResult
from services.runtime.chat.messages import ChatOutput
from services.runtime.chat.stream import ChatStreamRenderer


def audio_chunk(chunk: AudioOut) -> omni_pb2.AudioChunk:
    return omni_pb2.AudioChunk(
        audio=media_pb2.Audio(
            data=chunk.pcm,
            format=media_pb2.AUDIO_FORMAT_PCM_S16LE,
            sample_rate_hz=chunk.sample_rate,
            channels=1,
        ),
        index=chunk.index,
    )


class OmniChatStream(ChatStreamRenderer[omni_pb2.StreamChatResponse]):
    def __init__(self, *, seed: int, input_tokens: int = 0) -> None:
        super().__init__(omni_pb2.StreamChatResponse, seed=seed, input_tokens=input_tokens)
        self._audio_seconds = 0.0  # sent so far, for a reply cancelled mid-speech

    def _fill_output(self, reply: Any, payload: object) -> bool:
        if isinstance(payload, AudioOut):
            self._audio_seconds += payload.seconds
            reply.audio.CopyFrom(audio_chunk(payload))
            return True
        return super()._fill_output(reply, payload)

    def _fill_completed(
        self, completed: Any, output: ChatOutput | None, usage: job_pb2.Usage
    ) -> None:
        super()._fill_completed(completed, output, usage)
        completed.audio_seconds = (
            output.audio_seconds if isinstance(output, ChatResult) else self._audio_seconds
        )
