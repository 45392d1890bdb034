"""What a servicer stands on: the settings, the engine, the executor and the shared job plumbing.

Servicers call `run_job` (unary) or `stream_job` (server streaming) and translate the plain
results and events to their protobuf messages; deadlines, client cancellation, job ids, queue
wait accounting and heartbeats are handled here once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from PIL import Image

from mmserve.common.v1 import job_pb2, media_pb2, model_pb2
from services.runtime import errors, job_protos, tracing
from services.runtime.builtin import has_random_weights, random_weights_notice
from services.runtime.calls import JOB_ID_HEADER, current_call
from services.runtime.config import ServiceSettings
from services.runtime.engine import Engine
from services.runtime.executor import (
    ExecutorConfig,
    ExpectedJob,
    JobContext,
    JobEvent,
    JobFailed,
    JobHandle,
    JobHeartbeat,
    JobQueued,
    JobStarted,
    JobUsage,
    SingleFlightExecutor,
)
from services.runtime.images import MAX_ASPECT_RATIO, ImageLimits
from services.runtime.media import UriPolicy, load_image
from services.runtime.metrics import ServiceMetrics
from services.runtime.operations import Inline, OperationTable

if TYPE_CHECKING:
    from services.runtime.pipeline import Pipeline

log = logging.getLogger("mmserve.runtime")
T = TypeVar("T")
E = TypeVar("E", bound=Engine)
S = TypeVar("S", bound=ServiceSettings)

SERVER_VERSION = "0.1.0"


class ModelState(enum.Enum):
    LOADING = model_pb2.MODEL_STATE_LOADING
    WARMING_UP = model_pb2.MODEL_STATE_WARMING_UP
    READY = model_pb2.MODEL_STATE_READY
    FAILED = model_pb2.MODEL_STATE_FAILED
    DRAINING = model_pb2.MODEL_STATE_DRAINING


@dataclass(frozen=True)
class Accepted:
    """First event of every stream: the job id and where it stands."""

    job_id: str
    queued: JobQueued


def fill_job_event(reply: Any, job_id: str, event: object) -> bool:
    """Sets `job_id` and, for the events every stream shares, the `accepted`, `queue` or
    `heartbeat` field of a Stream*Response (all streams use these names). Returns True when the
    event was one of them, so the servicer only maps its own events."""
    reply.job_id = job_id
    if isinstance(event, Accepted):
        reply.accepted.job_id = event.job_id
        reply.accepted.queue.CopyFrom(job_protos.queue_status(event.queued))
    elif isinstance(event, JobQueued):
        reply.queue.CopyFrom(job_protos.queue_status(event))
    elif isinstance(event, JobHeartbeat):
        reply.heartbeat.CopyFrom(job_protos.heartbeat(event))
    else:
        return False
    return True


class ServiceRuntime:
    """One per process: owns the executor and the CPU pool, and tracks the model's state."""

    def __init__(self, capability: str, settings: ServiceSettings, engine: Engine) -> None:
        self.capability = capability
        self.settings = settings
        self.engine = engine
        self.metrics = ServiceMetrics(capability)
        self.executor = SingleFlightExecutor(
            ExecutorConfig(
                max_queue_size=settings.max_queue_size,
                eta_alpha=settings.eta_alpha,
                eta_min_samples=settings.eta_min_samples,
                eta_base_seconds=settings.eta_base_seconds,
                job_retention_seconds=settings.job_retention_seconds,
            ),
            observer=self.metrics,
        )
        # Decode, resize and encode run here, never on the device thread.
        self.cpu_pool = ThreadPoolExecutor(settings.cpu_workers, thread_name_prefix="cpu")
        self.state = ModelState.LOADING
        self.load_error = ""
        self.load_seconds = 0.0
        # The capability's operations, set by the server before loading starts.
        self.pipeline: Pipeline | None = None
        # What every capability accepts as media, from the shared settings.
        self.image_limits = ImageLimits(
            max_pixels=settings.max_image_pixels,
            max_side=settings.max_image_side,
            max_bytes=settings.max_message_mb * 1024 * 1024,
            max_aspect_ratio=MAX_ASPECT_RATIO,
        )
        # The same, for inputs the capability resizes to a size of its own anyway.
        self._any_aspect_limits = dataclasses.replace(self.image_limits, max_aspect_ratio=None)
        self.uri_policy = UriPolicy(tuple(settings.allowed_uri_prefixes))
        # What operations keep open beyond a call (stores, files), closed after the last job.
        self._closers: list[Callable[[], None]] = []

    def on_close(self, closer: Callable[[], None]) -> None:
        """Runs `closer` when the service stops, after draining (a capability's own stores)."""
        self._closers.append(closer)

    def engine_as(self, cls: type[E]) -> E:
        """The engine, typed for the capability's operations."""
        if not isinstance(self.engine, cls):
            raise TypeError(
                f"{self.capability} needs a {cls.__name__}, got {type(self.engine).__name__}"
            )
        return self.engine

    def settings_as(self, cls: type[S]) -> S:
        """The settings, typed for the capability's operations."""
        if not isinstance(self.settings, cls):
            raise TypeError(
                f"{self.capability} needs {cls.__name__}, got {type(self.settings).__name__}"
            )
        return self.settings

    def load_image(
        self,
        image: media_pb2.Image,
        field: str,
        *,
        max_aspect_ratio: float | None = MAX_ASPECT_RATIO,
    ) -> Image.Image:
        """Bytes (or an allowed URI) -> a checked RGB image, within the service's limits.
        `max_aspect_ratio=None` for a capability that resizes every input to a size of its own
        (image-to-image), where an elongated input costs nothing. Decoding is CPU work: call it
        from `prepare` (the CPU pool)."""
        if max_aspect_ratio is None:
            limits = self._any_aspect_limits
        elif max_aspect_ratio == MAX_ASPECT_RATIO:
            limits = self.image_limits
        else:
            limits = dataclasses.replace(self.image_limits, max_aspect_ratio=max_aspect_ratio)
        return load_image(image, field=field, policy=self.uri_policy, limits=limits)

    # --- readiness ---
    def ensure_ready(self) -> None:
        if self.state is ModelState.READY:
            return
        if self.state is ModelState.FAILED:
            raise errors.Unavailable(f"model failed to load: {self.load_error}")
        if self.state is ModelState.DRAINING:
            raise errors.Unavailable("server is shutting down; retry on another replica", 1.0)
        raise errors.Unavailable(f"model is {self.state.name.lower()}; retry shortly", 2.0)

    def load(self) -> None:
        """Loads and warms the engine (blocking; run it off the loop)."""
        started = time.monotonic()
        try:
            self.engine.load()
            self.state = ModelState.WARMING_UP
            self.engine.warmup()
        except Exception as exc:
            self.state = ModelState.FAILED
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load")
            return
        finally:
            self.load_seconds = time.monotonic() - started
        if self.pipeline is not None:
            self.pipeline.register_batches()
        info = self.engine.info()
        self.metrics.set_model(info.family, info.model_id, info.device, info.dtype)
        self.metrics.model_load_seconds.set(self.load_seconds)
        self.metrics.track_device_memory(self.engine.memory_bytes)
        self.metrics.model_ready.set(1)
        self.state = ModelState.READY
        log.info("model ready in %.2fs: %s", self.load_seconds, info)

    # --- work ---
    def expect_job(self, kind: str, batch_key: Hashable = None) -> ExpectedJob:
        """Announces a batchable job whose inputs are about to be prepared on the CPU pool, so
        the batch that starts meanwhile waits for it (up to the kind's max_arrival_wait_ms).
        Pass the handle to run_job, or close it if preparing fails."""
        return self.executor.expect(kind, batch_key)

    async def run_cpu(self, fn: Callable[..., T], *args: Any) -> T:
        # The pool's threads do not inherit the call's context: a traced call hands it over.
        work = tracing.in_call_context(fn)
        return await asyncio.get_running_loop().run_in_executor(self.cpu_pool, work, *args)

    def _submit(
        self,
        context: Any,
        kind: str,
        fn: Callable[[JobContext], Any] | None,
        batch_input: Any,
        batch_key: Hashable,
        expected: ExpectedJob | None = None,
    ) -> JobHandle:
        try:
            self.ensure_ready()
            remaining = context.time_remaining() if context is not None else None
            deadline = None if remaining is None else time.monotonic() + remaining
            call = current_call()
            handle = self.executor.submit(
                kind,
                fn if fn is None else tracing.on_device(fn, kind),
                batch_input=batch_input,
                batch_key=batch_key,
                deadline=deadline,
                owner=call.key_id if call is not None else "",
            )
        finally:
            # Queued now (or refused): either way a batch must stop waiting for it.
            if expected is not None:
                expected.close()
        if call is not None and not call.job_id:
            call.job_id = handle.job_id
        return handle

    async def _announce(self, context: Any, handle: JobHandle) -> None:
        """Sends the job-id header once per call when the client asked for it early
        (`mmserve-job-id-early: 1`: it wants to GetJob/CancelJob while it waits; otherwise the
        call starts with the header already settled and the id goes out with the result, so
        the edge can still rerun the call elsewhere). The write runs in a shielded task: a
        sibling job of the same call that fails while it is in flight must not cancel it,
        because grpc refuses to send a status while initial metadata is half written (the
        interceptor settles it before the status)."""
        if context is None:
            return
        call = current_call()
        if call is None:
            await context.send_initial_metadata(((JOB_ID_HEADER, handle.job_id),))
            return
        if call.job_header is None:
            call.job_header = asyncio.ensure_future(
                context.send_initial_metadata(((JOB_ID_HEADER, handle.job_id),))
            )
        await asyncio.shield(call.job_header)

    async def run_job(
        self,
        context: Any,
        kind: str,
        fn: Callable[[JobContext], T] | None = None,
        *,
        batch_input: Any = None,
        batch_key: Hashable = None,
        expected: ExpectedJob | None = None,
    ) -> tuple[T, JobUsage]:
        """Runs one job for a unary call; the job id goes out in the response headers at once
        (the first job's, when a call runs several). `expected`: the announcement of this job
        (`expect_job`), withdrawn once it is queued."""
        trace = tracing.current()
        handle = self._submit(context, kind, fn, batch_input, batch_key, expected)
        try:
            await self._announce(context, handle)
            result = await handle.result()
        except asyncio.CancelledError:
            handle.cancel("client went away")
            raise
        finally:
            self._record_queue_wait(handle)
            if trace is not None:
                tracing.job_ended(trace, handle.snapshot(), batched=fn is None)
        snap = handle.snapshot()
        return result, snap.usage

    async def stream_job(
        self,
        context: Any,
        kind: str,
        fn: Callable[[JobContext], Any] | None = None,
        *,
        batch_input: Any = None,
        batch_key: Hashable = None,
    ) -> AsyncIterator[tuple[str, Accepted | JobEvent]]:
        """Runs one job for a streaming call, yielding (job id, event): Accepted first, then the
        executor's events with heartbeats; a failed job raises its error (the interceptor maps
        it). Leaving the loop early, or the client going away, cancels the job. A batch kind's
        job streams too: its batch operation emits on each job's own context."""
        trace = tracing.current()
        handle = self._submit(context, kind, fn, batch_input, batch_key)
        try:
            first = True
            async for event in handle.events(heartbeat_seconds=self.settings.heartbeat_seconds):
                if first and isinstance(event, JobQueued):
                    first = False
                    yield handle.job_id, Accepted(handle.job_id, event)
                    continue
                if isinstance(event, JobStarted):
                    self._record_queue_wait(handle)
                if isinstance(event, JobFailed):
                    raise event.error
                yield handle.job_id, event
        finally:
            # Runs on normal end, on client cancel (CancelledError) and on generator close.
            handle.cancel("client went away")
            self._record_queue_wait(handle)
            if trace is not None:
                tracing.job_ended(trace, handle.snapshot(), batched=fn is None)

    def _record_queue_wait(self, handle: JobHandle) -> None:
        call = current_call()
        if call is not None:
            call.queue_seconds = handle.snapshot().queue_seconds

    # --- facts for GetModelInfo ---
    def model_info(self) -> model_pb2.ModelInfo:
        base = model_pb2.ModelInfo(
            model_id=self.settings.model or "(built-in tiny model)",
            revision=self.settings.revision or "",
            state=self.state.value,
            load_error=self.load_error,
            load_seconds=self.load_seconds,
            max_queue_size=self.settings.max_queue_size,
            max_batch_size=1,
            server_version=SERVER_VERSION,
        )
        if self.state in (ModelState.READY, ModelState.DRAINING):
            info = self.engine.info()
            base.family = info.family
            base.model_id = info.model_id
            base.revision = info.revision
            base.architecture = info.architecture
            base.dtype = info.dtype
            base.device = info.device
            base.attention_implementation = info.attention_implementation
            base.compiled = info.compiled
            base.capabilities.extend(info.capabilities)
            base.max_batch_size = self.executor.max_batch_size
            base.random_weights = has_random_weights(info.model_id)
            if base.random_weights:
                base.notice = random_weights_notice(self.capability)
        return base

    def close(self) -> None:
        for closer in self._closers:
            try:
                closer()
            except Exception:
                log.exception("closing %s failed", getattr(closer, "__qualname__", closer))
        self._closers.clear()
        self.cpu_pool.shutdown(wait=False, cancel_futures=True)
        self.metrics.stop()


class GetJob(Inline):
    async def respond(self, message: job_pb2.GetJobRequest, context: Any) -> job_pb2.GetJobResponse:
        snapshot = self.runtime.executor.get(_job_id(message), owner=_caller())
        return job_pb2.GetJobResponse(job=job_protos.job(snapshot))


class CancelJob(Inline):
    async def respond(
        self, message: job_pb2.CancelJobRequest, context: Any
    ) -> job_pb2.CancelJobResponse:
        snapshot = self.runtime.executor.cancel(
            _job_id(message), "cancelled by CancelJob", owner=_caller()
        )
        return job_pb2.CancelJobResponse(job=job_protos.job(snapshot))


def job_handlers(runtime: ServiceRuntime) -> OperationTable:
    """GetJob and CancelJob, the same in every capability's table."""
    return {"GetJob": GetJob(runtime), "CancelJob": CancelJob(runtime)}


def _caller() -> str:
    """The calling key's id ("" with auth off): jobs are visible to the key that made them."""
    call = current_call()
    return call.key_id if call is not None else ""


def _job_id(request: job_pb2.GetJobRequest | job_pb2.CancelJobRequest) -> str:
    if not request.job_id:
        raise errors.InvalidArgument.for_field("job_id", "required")
    return request.job_id
