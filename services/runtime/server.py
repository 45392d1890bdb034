"""Starting, serving and draining one capability process on grpc.aio.

Lifecycle: bind and report NOT_SERVING at once (probes get answers while weights load), load
and warm the engine off the loop, report SERVING; on SIGTERM report NOT_SERVING, refuse new
work, finish queued and running jobs within the grace period, then exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.runtime.app import ModelState, ServiceRuntime, job_handlers
from services.runtime.config import ConfigError, ServiceSettings, load_settings
from services.runtime.engine import Engine
from services.runtime.interceptors import ServingInterceptor
from services.runtime.logs import configure_logging
from services.runtime.operations import OperationTable
from services.runtime.pipeline import Pipeline, add_operations, service_descriptor
from services.runtime.references import imported
from services.runtime.security import KeyStore, RateLimiter
from services.runtime.threads import apply_gil_switch_interval, apply_openmp_wait_policy
from services.runtime.tracing import Tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("mmserve.server")


@dataclass(frozen=True)
class Capability:
    """What a capability folder provides to be served: nothing else is needed.

    `operations` builds the table from each RPC of the service to the operation that answers
    it (services.runtime.operations); the runtime adds GetJob and CancelJob. It is called once
    the runtime exists (the engine is made, not loaded) and may import the capability's model
    code: `--help` and config errors never reach it."""

    name: str  # "vision"
    service_names: tuple[str, ...]  # full proto service names; also the health service names
    settings_cls: type[ServiceSettings]
    # A factory, or "module:name" of one (an Engine class will do), imported when the server
    # starts: after process-wide settings (threads, OpenMP) apply, and never for `--help`.
    create_engine: Callable[[ServiceSettings], Engine] | str
    operations: Callable[[ServiceRuntime], OperationTable] | str

    def __post_init__(self) -> None:
        # Health and reflection name every service; operations serve exactly one.
        if len(self.service_names) != 1:
            raise ValueError(f"{self.name}: a capability serves one service")

    def engine(self, settings: ServiceSettings) -> Engine:
        engine: Engine = imported(self.create_engine)(settings)
        return engine

    def table(self, runtime: ServiceRuntime) -> OperationTable:
        """Every RPC of the service: the capability's operations, GetJob and CancelJob."""
        return {**job_handlers(runtime), **imported(self.operations)(runtime)}


PENDING_CALLS_BOUND = 1_000_000


def server_options(settings: ServiceSettings) -> list[tuple[str, int]]:
    size = settings.max_message_mb * 1024 * 1024
    return [
        ("grpc.max_send_message_length", size),
        ("grpc.max_receive_message_length", size),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_seconds * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            int(settings.min_client_ping_interval_seconds * 1000),
        ),
        # Envoy keeps pooled upstream connections; let it reuse them freely.
        ("grpc.so_reuseport", 0),
        # grpc core cancels calls that wait for the application beyond these bounds (1,000
        # soft, 3,000 hard by default) with a bare CANCELLED and no log line. Admission is the
        # interceptor's job (max_concurrent_calls answers RESOURCE_EXHAUSTED with a retry hint),
        # so core only needs room for a burst to reach it.
        ("grpc.server.max_pending_requests", PENDING_CALLS_BOUND),
        ("grpc.server.max_pending_requests_hard_limit", PENDING_CALLS_BOUND),
    ]


class ServiceServer:
    """One running capability server; usable in-process by tests and by `main`."""

    def __init__(
        self,
        capability: Capability,
        settings: ServiceSettings,
        span_exporter: SpanExporter | None = None,
    ) -> None:
        """`span_exporter`: also export spans there (tests), even with no OTLP endpoint."""
        self.capability = capability
        self.settings = settings
        self.runtime = ServiceRuntime(capability.name, settings, capability.engine(settings))
        self.tracing = Tracing.from_settings(settings, capability.name, span_exporter)
        keys = KeyStore.from_sources(settings.api_keys, settings.api_keys_file)
        limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
        self.server = grpc.aio.server(
            interceptors=[
                ServingInterceptor(
                    keys,
                    limiter,
                    self.runtime.metrics,
                    open_probes=settings.open_probes,
                    max_concurrent_calls=settings.max_concurrent_calls,
                    tracing=self.tracing,
                )
            ],
            options=server_options(settings),
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        pipeline = Pipeline(self.runtime, capability.table(self.runtime))
        self.runtime.pipeline = pipeline
        add_operations(self.server, pipeline, service_descriptor(capability.service_names[0]))
        if settings.reflection:
            reflection.enable_server_reflection(
                (*capability.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME),
                self.server,
            )
        self.port = 0
        self.metrics_port: int | None = None
        self._stopped = asyncio.Event()
        self._load_task: asyncio.Task[None] | None = None

    async def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.capability.service_names):
            await self.health.set(name, status)

    async def start(self) -> None:
        await self._set_health(False)
        self.port = self.server.add_insecure_port(f"{self.settings.host}:{self.settings.port}")
        if self.port == 0:
            raise RuntimeError(f"could not bind {self.settings.host}:{self.settings.port}")
        await self.server.start()
        await self.runtime.executor.start()
        if self.settings.metrics_port is not None:
            self.metrics_port = self.runtime.metrics.serve(
                self.settings.host, self.settings.metrics_port
            )
        log.info(
            json.dumps(
                {
                    "event": "listening",
                    "capability": self.capability.name,
                    "port": self.port,
                    "metrics_port": self.metrics_port,
                }
            )
        )
        self._load_task = asyncio.create_task(self._load())

    async def _load(self) -> None:
        await self.runtime.executor.run_on_device(self.runtime.load)
        if self.runtime.state is ModelState.READY:
            await self._set_health(True)
            log.info(json.dumps({"event": "serving", "capability": self.capability.name}))

    async def wait_loaded(self) -> None:
        if self._load_task is not None:
            await self._load_task

    async def drain_and_stop(self) -> bool:
        """NOT_SERVING first, then finish the work in hand, then close the port."""
        await self.health.enter_graceful_shutdown()
        if self.runtime.state is not ModelState.FAILED:
            self.runtime.state = ModelState.DRAINING
        log.info(json.dumps({"event": "draining", "queued": self.runtime.executor.queue_depth}))
        drained = await self.runtime.executor.drain(self.settings.drain_grace_seconds)
        # Streams and unary calls whose jobs just ended still need a moment to send results.
        await self.server.stop(grace=min(5.0, self.settings.drain_grace_seconds) or None)
        await self.runtime.executor.close()
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        self.runtime.close()
        if self.tracing is not None:
            # Sends the spans still buffered; bounded, so an unreachable collector cannot
            # hold the exit (the export thread gives up on its own timeout).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.to_thread(self.tracing.close), 10.0)
        self._stopped.set()
        log.info(json.dumps({"event": "stopped", "drained": drained}))
        return drained

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def serve(capability: Capability, settings: ServiceSettings) -> int:
    server = ServiceServer(capability, settings)
    if server.tracing is not None:
        server.tracing.install_global()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    await stop.wait()
    await server.drain_and_stop()
    return 0


def main(capability: Capability, argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m services.<capability>`."""
    try:
        settings = load_settings(capability.settings_cls, argv)
    except ConfigError as exc:
        print(f"{capability.name}: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    threading = apply_openmp_wait_policy(settings.openmp_wait_policy)
    threading |= apply_gil_switch_interval(settings.gil_switch_interval_ms)
    log.info(json.dumps({"event": "cpu_threads", **threading}))
    return asyncio.run(serve(capability, settings))
