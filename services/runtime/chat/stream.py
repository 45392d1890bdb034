"""A chat job's events -> the Stream*Response messages of a StreamChat call.

Every chat service's StreamChatResponse has the same shape (job_id; accepted, queue, heartbeat,
delta, completed with finish_reason, usage and seed), so one renderer serves them all,
parameterised by the response class; a capability subclasses it for its own events (omni's
audio) by overriding `_fill_output` and `_fill_completed`.

A CancelJob from another connection ends the job while this client still listens, so the
renderer sends a last `completed` event (FINISH_REASON_CANCELLED, the usage so far, the seed)
before the stream ends with CANCELLED: the client learns how far the answer got.

`ChatStreamRenderer` is what operations return from `stream_renderer`; the pipeline fills the
job id and the accepted, queue and heartbeat events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message as ProtoMessage

from mmserve.common.v1 import chat_pb2, job_pb2
from services.runtime import job_protos
from services.runtime.chat.messages import ChatOutput, PromptTokens, TextDelta
from services.runtime.chat.protos import finish_reason_proto
from services.runtime.operations import StreamRenderer, Usage

Reply = TypeVar("Reply", bound=ProtoMessage)


class ChatStreamRenderer(StreamRenderer[ChatOutput], Generic[Reply]):
    """One StreamChat call's renderer: TextDelta -> `delta`, the job's ChatOutput ->
    `completed`, a cancel from elsewhere -> `completed` with FINISH_REASON_CANCELLED and the
    token counts seen so far. `input_tokens` is the prompt's size when known before the job
    runs, else a PromptTokens output reports it."""

    def __init__(self, new_reply: Callable[[], Reply], *, seed: int, input_tokens: int = 0) -> None:
        self._new_reply = new_reply
        self._seed = seed
        self._input_tokens = input_tokens
        self._output_tokens = 0

    async def output(self, payload: Any) -> Reply | None:
        reply: Any = self._new_reply()
        return reply if self._fill_output(reply, payload) else None

    async def done(self, result: ChatOutput, usage: Usage) -> Reply:
        return self._completed_reply(result, usage)

    async def cancelled(self, usage: Usage) -> Reply:
        return self._completed_reply(None, usage)

    def _completed_reply(self, output: ChatOutput | None, timing: job_protos.Timing) -> Reply:
        """The last reply; `output` is None for a job cancelled from elsewhere."""
        reply: Any = self._new_reply()
        if output is not None:
            tokens = (output.input_tokens, output.output_tokens)
        else:
            tokens = (self._input_tokens, self._output_tokens)
        usage = job_protos.usage(timing, input_tokens=tokens[0], output_tokens=tokens[1])
        self._fill_completed(reply.completed, output, usage)
        return reply

    def _fill_output(self, reply: Any, payload: object) -> bool:
        """Maps a streamed output, True when `reply` now carries it; a subclass adds its
        capability's own outputs (and calls this for the rest)."""
        if isinstance(payload, TextDelta):
            self._output_tokens = payload.output_tokens
            reply.delta.text = payload.text
            reply.delta.output_tokens = payload.output_tokens
            return True
        if isinstance(payload, PromptTokens):
            self._input_tokens = payload.input_tokens
        return False

    def _fill_completed(
        self, completed: Any, output: ChatOutput | None, usage: job_pb2.Usage
    ) -> None:
        """Fills the last event; `output` is None for a job cancelled from elsewhere. A
        subclass adds its capability's own fields (and calls this)."""
        completed.finish_reason = (
            finish_reason_proto(output.finish_reason)
            if output is not None
            else chat_pb2.FINISH_REASON_CANCELLED
        )
        completed.usage.CopyFrom(usage)
        completed.seed = output.seed if output is not None else self._seed
