"""Typed operations: what one RPC of a capability does, in four steps the runtime drives.

    parse    (event loop)   protobuf request -> a typed plain request, every violation named
    prepare  (CPU pool)     decode, tokenize, preprocess: whatever need not wait for the device
    run      (device thread) the model, one job at a time, or a micro-batch of jobs
    render   (event loop)   plain result -> response, or a stream of events

A capability lists its RPCs in a table from method name to operation (`OperationTable`); the
runtime (`services.runtime.pipeline`) answers each call from it: queue events, ETA, heartbeats,
job ids, deadlines, cancellation, usage, splitting of large requests, micro-batching and the
out-of-memory policy live there once, so an operation only says what is specific to it. Nothing
here imports gRPC; an operation is testable in-process.

Batching is declared by type: a `BatchedOperation` runs many callers' prepared inputs in one
device call, and the executor coalesces, splits on failure and halves its batch size on OOM.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from services.runtime.executor import BatchSpec, JobContext, JobProgress, JoinSession, JoinSpec
from services.runtime.job_protos import Timing

if TYPE_CHECKING:
    from services.runtime.app import ServiceRuntime
    from services.runtime.pipeline import Pipeline

Req = TypeVar("Req")  # a parsed, validated request
Prep = TypeVar("Prep")  # a request ready for the device
Res = TypeVar("Res")  # what the device run returns
Reply = Any  # a protobuf response message


@dataclass
class Usage:
    """What a call cost: the longest queue wait and largest batch of its jobs, their summed run
    time, and the input tokens the operation adds. A call that runs one job reports that
    job's."""

    queue_seconds: float = 0.0
    run_seconds: float = 0.0
    batch_size: int = 0
    input_tokens: int = 0

    def add(self, job: Timing) -> None:
        self.queue_seconds = max(self.queue_seconds, job.queue_seconds)
        self.run_seconds += job.run_seconds
        self.batch_size = max(self.batch_size, job.batch_size)

    @classmethod
    def of(cls, job: Timing) -> Usage:
        """One job's usage (a JobUsage, or the snapshot of a job that ended early)."""
        usage = cls()
        usage.add(job)
        return usage


@dataclass(frozen=True)
class CallFacts:
    """What an operation may know about the call it serves, without gRPC."""

    streaming: bool


class StreamRenderer(ABC, Generic[Res]):
    """Turns one streaming call's job events into response messages. One per call, so it may
    keep state (the last step sent, tokens so far). The runtime fills the events every stream
    shares (accepted, queue position and ETA, heartbeat) itself; these methods map the rest and
    return None for an event that sends nothing. They run on the event loop; one that must do
    CPU work (encoding a preview) awaits the runtime's CPU pool."""

    async def output(self, payload: Any) -> Reply | None:
        """A piece the device streamed with `JobContext.emit` (text delta, preview, audio)."""
        return None

    async def progress(self, event: JobProgress) -> Reply | None:
        """A step report (`JobContext.progress`)."""
        return None

    @abstractmethod
    async def done(self, result: Res, usage: Usage) -> Reply:
        """The last message of a successful stream."""

    async def cancelled(self, usage: Usage) -> Reply | None:
        """Sent before the stream ends CANCELLED because the job was cancelled while the client
        still listens (CancelJob from another connection): how far the answer got."""
        return None


class Operation(ABC, Generic[Req, Prep, Res]):
    """One RPC's work. Subclasses set `kind` (the job kind: ETA class, metrics label, what
    GetJob reports) and implement `parse`, `run` and `render` (and `stream_renderer` when a
    streaming RPC serves it); `prepare` defaults to the parsed request itself."""

    kind: str = ""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime

    @abstractmethod
    def parse(self, message: Any, call: CallFacts) -> Req:
        """Protobuf -> typed request, on the loop. Raises errors.InvalidArgument naming every
        bad field at once (errors.Violations collects them). Must be cheap: no decoding."""

    def prepare(self, request: Req) -> Prep:
        """Runs on the CPU pool before the job is queued: decode images or audio, tokenize,
        preprocess. The default hands the request on unchanged (and costs no pool hop)."""
        return request  # type: ignore[return-value]

    def job_kind(self, prepared: Prep) -> str:
        """The job kind of one call, for its ETA, metrics and GetJob: `kind`, unless requests
        of one RPC differ so much in cost that they deserve ETAs of their own (a spoken reply
        against a text one). Batched operations keep `kind`: it names their batch."""
        return self.kind

    @abstractmethod
    def run(self, prepared: Prep, ctx: JobContext) -> Res:
        """Runs on the device thread. Call `ctx.check()` between steps so a cancel or deadline
        frees the device, `ctx.progress()` and `ctx.emit()` to stream."""

    async def render(self, result: Res, usage: Usage) -> Reply:
        """The unary response."""
        raise NotImplementedError(f"{type(self).__name__} has no unary response")

    def stream_renderer(self, prepared: Prep) -> StreamRenderer[Res]:
        """A renderer for one streaming call of this operation, made once it is prepared
        (a cancelled chat reports the prompt's token count)."""
        raise NotImplementedError(f"{type(self).__name__} does not stream")

    def device_operations(self) -> Sequence[BatchedOperation[Any, Any, Any]]:
        """The batched operations this one submits jobs to, for registration at load."""
        return ()

    @classmethod
    def prepares(cls) -> bool:
        return cls.prepare is not Operation.prepare


class BatchedOperation(Operation[Req, Prep, Res]):
    """An operation whose jobs the executor may run together: `run_batch` takes the prepared
    inputs of several callers (same `batch_key`) and returns one result per input, in order; an
    Exception in the list fails only its caller. A request larger than one device call is cut
    by `split` into parts (each prepared and queued as soon as it is ready, so the device runs
    one part while the CPU pool prepares the next) and the parts' results joined by `merge`."""

    @abstractmethod
    def batch_spec(self) -> BatchSpec | None:
        """How jobs coalesce, read once the model is loaded; None runs every job alone."""

    @abstractmethod
    def run_batch(
        self, prepared: list[Prep], contexts: list[JobContext]
    ) -> Sequence[Res | Exception]: ...

    def run(self, prepared: Prep, ctx: JobContext) -> Res:
        result = self.run_batch([prepared], [ctx])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def batch_key(self, prepared: Prep) -> Hashable:
        """Only inputs with equal keys share a batch (e.g. the same image size)."""
        return None

    def join_spec(self) -> JoinSpec | None:
        """Iteration-level batching, read once the model is loaded: a spec makes the kind's
        jobs join one long device run (`run_joined`) between its steps and leave it one by one,
        in place of `batch_spec`'s micro-batches; None (the default) does not."""
        return None

    def run_joined(self, session: JoinSession) -> None:
        """The joined run on the device thread (see JoinSession): takes prepared inputs as
        they arrive and ends each job with session.done()."""
        raise NotImplementedError(f"{type(self).__name__} declares no join_spec")

    def solo(self, prepared: Prep) -> bool:
        """True for a prepared input that must run as a plain job of `job_kind(prepared)`,
        even when the kind batches (a spoken chat reply in a service that batches text)."""
        return False

    def split(self, request: Req) -> list[Req]:
        """Device-sized parts of a request; one part by default."""
        return [request]

    def halve(self, request: Req) -> list[Req]:
        """Two smaller requests for a part that ran out of memory on its own (the executor
        can split a batch of jobs, not one job); [] when it cannot be cut (one item). The
        pipeline runs the halves and joins them with `merge`."""
        return []

    def merge(self, results: list[Res]) -> Res:
        """Joins the parts' results in order."""
        if len(results) != 1:
            raise NotImplementedError(f"{type(self).__name__} splits but does not merge")
        return results[0]

    def device_operations(self) -> Sequence[BatchedOperation[Any, Any, Any]]:
        return (self,)


class Jobs:
    """What a composed operation uses to run other operations' jobs within its call: each
    `run` prepares, queues and awaits one, adding its usage to the call's."""

    def __init__(self, pipeline: Pipeline, context: Any, usage: Usage) -> None:
        self._pipeline = pipeline
        self._context = context
        self.usage = usage

    async def run(self, operation: Operation[Any, Any, Res], request: Any) -> Res:
        result: Res = await self._pipeline.run(self._context, operation, request, self.usage)
        return result


class ComposedOperation(Operation[Req, Req, Res]):
    """An RPC built from other operations' jobs plus CPU work around them (a similarity matrix
    from image and text embeddings): `compose` awaits `jobs.run(...)` for each, concurrently
    where it likes; cancellation, deadlines and usage reach every job it starts."""

    @abstractmethod
    async def compose(self, request: Req, jobs: Jobs) -> Res: ...

    def run(self, prepared: Req, ctx: JobContext) -> Res:
        raise TypeError(f"{type(self).__name__} runs through compose(), not on the device")


class Inline(ABC):
    """An RPC answered on the event loop without a job of its own (GetModelInfo, GetJob,
    CancelJob, session control). `context` is the call's, for what only a servicer may use."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime

    @abstractmethod
    async def respond(self, message: Any, context: Any) -> Reply: ...


class InlineStream(ABC):
    """A streaming RPC whose events come from somewhere other than one job (a live session)."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime

    @abstractmethod
    def stream(self, message: Any, context: Any) -> AsyncIterator[Reply]: ...


class NotServed:
    """A method of the contract this capability (or its loaded model) does not serve: the call
    gets UNIMPLEMENTED with `reason`, unary or streaming alike."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


Handler = Operation[Any, Any, Any] | Inline | InlineStream | NotServed
OperationTable = Mapping[str, Handler]
