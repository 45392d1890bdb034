"""The one request pipeline: answers every RPC of a capability from its operation table.

For a job-running operation a call goes: readiness check, `parse` on the loop, `prepare` on the
CPU pool, a job on the executor (plain or micro-batched, split into device-sized parts when the
operation says so), then `render`. Streams add the events every capability shares (accepted with
the job id, queue position and ETA, heartbeats) and the operation's own (progress, output,
completion, and what a cancelled job got to). Deadlines, client cancellation, the job-id header
and usage are the runtime's (`ServiceRuntime.run_job` / `stream_job`); the gRPC method handlers
are built here from the service descriptor, so a servicer is nothing but its table.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from services.runtime import tracing
from services.runtime.app import Accepted, fill_job_event
from services.runtime.errors import JobCancelled, OutOfMemory, Unimplemented
from services.runtime.executor import (
    ExpectedJob,
    JobFinished,
    JobHeartbeat,
    JobOutput,
    JobProgress,
    JobQueued,
)
from services.runtime.operations import (
    BatchedOperation,
    CallFacts,
    ComposedOperation,
    Handler,
    Inline,
    InlineStream,
    Jobs,
    NotServed,
    Operation,
    OperationTable,
    Usage,
)

if TYPE_CHECKING:
    from services.runtime.app import ServiceRuntime

T = TypeVar("T")
log = logging.getLogger("mmserve.pipeline")
UNARY = CallFacts(streaming=False)
STREAMING = CallFacts(streaming=True)


async def gather_or_cancel(*steps: Awaitable[T]) -> list[T]:
    """Runs steps concurrently; the first failure cancels the rest (whose queued or running
    jobs the runtime then cancels) and is raised as itself, not as a group."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class Pipeline:
    """Drives operations for one ServiceRuntime."""

    def __init__(self, runtime: ServiceRuntime, table: OperationTable) -> None:
        self.runtime = runtime
        self.table = table

    # --- load time ---------------------------------------------------------------------------

    def register_batches(self) -> None:
        """Registers every batched operation whose spec (read now, with the model loaded)
        allows batching; the others run their jobs alone."""
        executor = self.runtime.executor
        for handler in self.table.values():
            if not isinstance(handler, Operation):
                continue
            for operation in handler.device_operations():
                if executor.is_batched(operation.kind):
                    continue
                if (join := operation.join_spec()) is not None:
                    executor.register_joinable(operation.kind, operation.run_joined, join)
                elif (spec := operation.batch_spec()) is not None:
                    executor.register_batch(operation.kind, operation.run_batch, spec)

    def _batches(
        self, operation: Operation[Any, Any, Any]
    ) -> TypeGuard[BatchedOperation[Any, Any, Any]]:
        """Whether the operation's jobs run micro-batched (its spec allowed it at load)."""
        return isinstance(operation, BatchedOperation) and self.runtime.executor.is_batched(
            operation.kind
        )

    # --- one job -----------------------------------------------------------------------------

    async def _prepare(self, operation: Operation[Any, Any, Any], request: Any) -> Any:
        if not operation.prepares():
            return request
        with tracing.step("prepare", operation.kind):
            return await self.runtime.run_cpu(operation.prepare, request)

    async def run(
        self, context: Any, operation: Operation[Any, Any, Any], request: Any, usage: Usage
    ) -> Any:
        """Prepares and runs `request` as one job (or one per device-sized part) and returns
        the operation's result; a composed operation runs its own jobs."""
        if isinstance(operation, ComposedOperation):
            return await operation.compose(request, Jobs(self, context, usage))
        if self._batches(operation):
            return await self._run_batched(context, operation, request, usage)
        prepared = await self._prepare(operation, request)
        result, job_usage = await self.runtime.run_job(
            context, operation.job_kind(prepared), _device_call(operation, prepared)
        )
        usage.add(job_usage)
        return result

    async def _run_batched(
        self, context: Any, operation: BatchedOperation[Any, Any, Any], request: Any, usage: Usage
    ) -> Any:
        parts = operation.split(request)
        # Announced before preparing starts, so a batch the device starts meanwhile waits for
        # these parts instead of leaving them to a later, smaller batch.
        announced = [self.runtime.expect_job(operation.kind) for _ in parts]
        prepared = [asyncio.ensure_future(self._prepare(operation, part)) for part in parts]

        async def one(part: Any, ready: Awaitable[Any], expected: ExpectedJob | None) -> Any:
            prepared_part = await ready
            if operation.solo(prepared_part):
                if expected is not None:
                    expected.close()
                kind = operation.job_kind(prepared_part)
                call = _device_call(operation, prepared_part)
                result, job_usage = await self.runtime.run_job(context, kind, call)
                usage.add(job_usage)
                return result
            try:
                result, job_usage = await self.runtime.run_job(
                    context,
                    operation.kind,
                    batch_input=prepared_part,
                    batch_key=operation.batch_key(prepared_part),
                    expected=expected,
                )
            except OutOfMemory:
                # A part alone did not fit: the executor has lowered the batch size already;
                # what is left is to cut the part itself, when the operation can.
                halves = operation.halve(part)
                if len(halves) < 2:
                    raise
                log.warning("out of memory in one %s part; running it in halves", operation.kind)
                results = [await one(half, self._prepare(operation, half), None) for half in halves]
                return operation.merge(results)
            usage.add(job_usage)
            return result

        try:
            results = await gather_or_cancel(
                *(
                    one(part, ready, expected)
                    for part, ready, expected in zip(parts, prepared, announced, strict=True)
                )
            )
        finally:
            for ready in prepared:  # a failed part leaves the others' preparing unawaited
                ready.cancel()
            for expected in announced:
                expected.close()
            await asyncio.gather(*prepared, return_exceptions=True)
        return operation.merge(results)

    # --- calls -------------------------------------------------------------------------------

    async def unary(self, operation: Operation[Any, Any, Any], message: Any, context: Any) -> Any:
        self.runtime.ensure_ready()
        request = operation.parse(message, UNARY)
        usage = Usage()
        result = await self.run(context, operation, request, usage)
        with tracing.step("render", operation.kind):
            return await operation.render(result, usage)

    async def stream(
        self,
        operation: Operation[Any, Any, Any],
        reply_cls: Any,
        message: Any,
        context: Any,
    ) -> AsyncIterator[Any]:
        self.runtime.ensure_ready()
        request = operation.parse(message, STREAMING)
        prepared = await self._prepare(operation, request)
        renderer = operation.stream_renderer(prepared)
        if self._batches(operation) and not operation.solo(prepared):
            events = self.runtime.stream_job(
                context,
                operation.kind,
                batch_input=prepared,
                batch_key=operation.batch_key(prepared),
            )
        else:
            events = self.runtime.stream_job(
                context, operation.job_kind(prepared), _device_call(operation, prepared)
            )
        job_id = ""
        try:
            async for job_id, event in events:
                if isinstance(event, Accepted | JobQueued | JobHeartbeat):
                    reply = reply_cls()
                    fill_job_event(reply, job_id, event)
                elif isinstance(event, JobOutput):
                    reply = await renderer.output(event.payload)
                elif isinstance(event, JobProgress):
                    reply = await renderer.progress(event)
                elif isinstance(event, JobFinished):
                    # The final answer is the stream's render; partial outputs are not traced.
                    with tracing.step("render", operation.kind):
                        reply = await renderer.done(event.result, Usage.of(event.usage))
                else:
                    continue
                if reply is not None:
                    reply.job_id = job_id
                    yield reply
        except JobCancelled:
            # CancelJob from another connection: this client still listens, so it learns how
            # far the job got before the stream ends CANCELLED.
            if job_id:
                final = await renderer.cancelled(Usage.of(self.runtime.executor.get(job_id)))
                if final is not None:
                    final.job_id = job_id
                    yield final
            raise


def _device_call(operation: Operation[Any, Any, Any], prepared: Any) -> Callable[[Any], Any]:
    run = operation.run
    return lambda ctx: run(prepared, ctx)


def service_descriptor(full_name: str) -> ServiceDescriptor:
    return descriptor_pool.Default().FindServiceByName(full_name)


def add_operations(server: grpc.aio.Server, pipeline: Pipeline, service: ServiceDescriptor) -> None:
    """Serves `service` from the pipeline's table: one handler per method, unary or streaming
    as the contract says. A method without an entry, or an entry the service lacks, is a
    programming error caught at start."""
    table = pipeline.table
    names = {method.name for method in service.methods}
    unknown = sorted(set(table) - names)
    missing = sorted(names - set(table))
    if unknown or missing:
        raise ValueError(
            f"{service.full_name}: operations for unknown methods {unknown}, "
            f"methods without an operation {missing}"
        )
    handlers = {
        method.name: _method_handler(pipeline, method, table[method.name])
        for method in service.methods
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )


def _method_handler(
    pipeline: Pipeline, method: MethodDescriptor, handler: Handler
) -> grpc.RpcMethodHandler:
    """The one handler of `method`, chosen here once: gRPC calls it for every request."""
    if method.client_streaming:
        raise ValueError(f"{method.full_name}: client streaming is not served (grpc-web)")
    reply_cls = GetMessageClass(method.output_type)
    streams = method.server_streaming
    answer: Callable[[Any, Any], Any]
    if isinstance(handler, NotServed):
        answer = _refusal(f"{method.name}: {handler.reason}", streams)
    elif isinstance(handler, InlineStream if not streams else Inline):
        kind = "is unary" if not streams else "streams"
        raise TypeError(f"{method.full_name} {kind}; {type(handler).__name__} does not fit it")
    elif isinstance(handler, Inline):
        answer = handler.respond
    elif isinstance(handler, InlineStream):
        answer = handler.stream
    elif streams:
        answer = functools.partial(pipeline.stream, handler, reply_cls)
    else:
        answer = functools.partial(pipeline.unary, handler)
    make = grpc.unary_stream_rpc_method_handler if streams else grpc.unary_unary_rpc_method_handler
    return make(
        _as_handler(answer, streams),
        request_deserializer=GetMessageClass(method.input_type).FromString,
        response_serializer=reply_cls.SerializeToString,
    )


def _as_handler(answer: Callable[[Any, Any], Any], streams: bool) -> Callable[[Any, Any], Any]:
    """A coroutine function for unary methods and an async generator function for streaming
    ones: the shapes grpc.aio (and the interceptor) tell apart."""
    if not streams:

        async def unary(message: Any, context: Any) -> Any:
            return await answer(message, context)

        return unary

    async def stream(message: Any, context: Any) -> AsyncIterator[Any]:
        async for reply in answer(message, context):
            yield reply

    return stream


def _refusal(reason: str, streams: bool) -> Callable[[Any, Any], Any]:
    async def refuse(message: Any, context: Any) -> Any:
        raise Unimplemented(reason)

    async def refuse_stream(message: Any, context: Any) -> AsyncIterator[Any]:
        raise Unimplemented(reason)
        yield  # an async generator, so grpc serves it as a stream

    return refuse_stream if streams else refuse
