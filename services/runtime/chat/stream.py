"""A chat job's events -> the Stream*Response messages of a StreamChat call.

Every chat service's StreamChatResponse has the same shape (job_id; accepted, queue, heartbeat,
delta, completed with finish_reason, usage and seed), so one renderer serves them all,
parameterised by the response class; a capability subclasses it for its own events (omni's
audio) by overriding `_fill_output` and `_fill_completed`.

A CancelJob from another connection ends the job while this client still listens, so the
renderer sends a last `completed` event (FINISH_REASON_CANCELLED, the usage so far, the seed)
before the stream ends with CANCELLED: the client learns how far the answer got.

`ChatStreamRenderer` is what operations return from `stream_renderer` (the pipeline fills the
job id and the accepted, queue and heartbeat events); `ChatStreamWriter` drives a whole stream
of `stream_job` events itself, for servicers not yet on the operation pipeline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message as ProtoMessage

from mmserve.common.v1 import chat_pb2, job_pb2
from services.runtime import job_protos
from services.runtime.app import fill_job_event
from services.runtime.chat.messages import ChatOutput, PromptTokens, TextDelta
from services.runtime.chat.protos import finish_reason_proto
from services.runtime.errors import JobCancelled
from services.runtime.executor import JobFinished, JobOutput, JobSnapshot, JobUsage
from services.runtime.operations import StreamRenderer, Usage

Reply = TypeVar("Reply", bound=ProtoMessage)


class _ChatEvents(Generic[Reply]):
    """The chat-specific part of a stream: deltas and the last event, with the token counts
    seen so far for a stream cut short."""

    def __init__(self, new_reply: Callable[[], Reply], *, seed: int, input_tokens: int) -> None:
        self._new_reply = new_reply
        self._seed = seed
        self._input_tokens = input_tokens
        self._output_tokens = 0

    def _output_reply(self, payload: object) -> Reply | None:
        reply: Any = self._new_reply()
        return reply if self._fill_output(reply, payload) else None

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


class ChatStreamRenderer(_ChatEvents[Reply], StreamRenderer[ChatOutput]):
    """One StreamChat call's renderer: TextDelta -> `delta`, the job's ChatOutput ->
    `completed`, a cancel from elsewhere -> `completed` with FINISH_REASON_CANCELLED."""

    def __init__(self, new_reply: Callable[[], Reply], *, seed: int, input_tokens: int = 0) -> None:
        """`input_tokens` is the prompt's size when known before the job runs, else a
        PromptTokens output reports it."""
        super().__init__(new_reply, seed=seed, input_tokens=input_tokens)

    async def output(self, payload: Any) -> Reply | None:
        return self._output_reply(payload)

    async def done(self, result: ChatOutput, usage: Usage) -> Reply:
        return self._completed_reply(result, usage)

    async def cancelled(self, usage: Usage) -> Reply:
        return self._completed_reply(None, usage)


class ChatStreamWriter(_ChatEvents[Reply]):
    """Turns one StreamChat job's events (the runtime's `stream_job`) into `Reply` messages."""

    def __init__(
        self,
        new_reply: Callable[[], Reply],
        snapshot: Callable[[str], JobSnapshot],
        *,
        seed: int,
        input_tokens: int = 0,
    ) -> None:
        """`snapshot` looks a job up (the executor's `get`); `input_tokens` is the prompt's
        size when known before the job runs, else a PromptTokens output reports it."""
        super().__init__(new_reply, seed=seed, input_tokens=input_tokens)
        self._snapshot = snapshot
        self._job_id = ""

    async def replies(self, events: AsyncIterator[tuple[str, Any]]) -> AsyncIterator[Reply]:
        """The replies of the whole stream; a cancelled job ends with a CANCELLED `completed`
        reply, then its JobCancelled."""
        try:
            async for job_id, event in events:
                reply = self.reply(job_id, event)
                if reply is not None:
                    yield reply
        except JobCancelled:
            if self._job_id:
                yield self.cancelled()
            raise

    def reply(self, job_id: str, event: object) -> Reply | None:
        """The reply for one event, or None for events the stream does not carry (progress:
        GetJob reports it, and the deltas carry token counts)."""
        self._job_id = job_id
        reply: Any = self._new_reply()
        if fill_job_event(reply, job_id, event):
            return reply
        if isinstance(event, JobOutput):
            reply = self._output_reply(event.payload)
        elif isinstance(event, JobFinished):
            reply = self._completed_reply(event.result, event.usage)
        else:
            return None
        if reply is not None:
            reply.job_id = job_id
        return reply

    def cancelled(self) -> Reply:
        """The last reply of a job cancelled from elsewhere: what it had done so far."""
        snapshot = self._snapshot(self._job_id)
        usage = JobUsage(snapshot.queue_seconds, snapshot.run_seconds, snapshot.batch_size)
        reply: Any = self._completed_reply(None, usage)
        reply.job_id = self._job_id
        return reply
