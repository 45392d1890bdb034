"""Prometheus metrics of one capability process, served on their own HTTP port.

Names share the `mmserve_` prefix so one dashboard covers every capability; the `capability`
constant label (on mmserve_info) tells processes apart. The executor reports through the
ExecutorObserver hooks implemented here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """All metrics of one service process, in a registry of its own (tests run many)."""

    def __init__(self, capability: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.info = Gauge(
            "mmserve_info",
            "Static facts about this process (value 1).",
            ["capability", "family", "model", "device", "dtype"],
            registry=r,
        )
        self.requests = Counter(
            "mmserve_requests_total",
            "RPCs finished, by method and status code.",
            ["method", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "mmserve_request_duration_seconds",
            "RPC duration including queue wait.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth_gauge = Gauge(
            "mmserve_queue_depth", "Jobs waiting for the device.", registry=r
        )
        self.queue_wait = Histogram(
            "mmserve_queue_wait_seconds",
            "Time jobs waited for the device, by job kind.",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.job_seconds = Histogram(
            "mmserve_job_duration_seconds",
            "Device time per job, by kind and final state.",
            ["kind", "state"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "mmserve_batch_size",
            "Jobs per device call, by job kind.",
            ["kind"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.oom_halvings = Counter(
            "mmserve_oom_halvings_total",
            "Batches halved after running out of memory.",
            ["kind"],
            registry=r,
        )
        self.max_batch = Gauge(
            "mmserve_effective_max_batch",
            "Current batch cap per kind (after OOM halving).",
            ["kind"],
            registry=r,
        )
        self.model_load_seconds = Gauge(
            "mmserve_model_load_seconds",
            "Seconds spent loading and warming up the model.",
            registry=r,
        )
        self.model_ready = Gauge(
            "mmserve_model_ready", "1 when the model is loaded and serving.", registry=r
        )
        self.rejected = Counter(
            "mmserve_rejected_total",
            "Calls refused before any work: queue full, rate limit, auth.",
            ["reason"],
            registry=r,
        )
        self.device_memory = Gauge(
            "mmserve_device_memory_bytes",
            "Memory in use on the model's device (RSS on CPU).",
            registry=r,
        )
        # process_resident_memory_bytes, CPU seconds, open fds: the private registry misses the
        # default one's process collector, and RSS is what load tests and soaks watch for leaks
        # (mmserve_device_memory_bytes is device memory on GPUs).
        ProcessCollector(registry=r)
        self.capability = capability
        self._http: Any = None

    # --- ExecutorObserver hooks (called on the event loop thread) ---
    def queue_depth(self, depth: int) -> None:
        self.queue_depth_gauge.set(depth)

    def job_started(self, kind: str, queue_seconds: float) -> None:
        self.queue_wait.labels(kind).observe(queue_seconds)

    def job_finished(self, kind: str, state: Any, run_seconds: float) -> None:
        self.job_seconds.labels(kind, getattr(state, "value", str(state))).observe(run_seconds)

    def batch_run(self, kind: str, size: int) -> None:
        self.batch_size.labels(kind).observe(size)

    def oom_halved(self, kind: str, new_max_batch: int) -> None:
        self.oom_halvings.labels(kind).inc()
        self.max_batch.labels(kind).set(new_max_batch)

    # --- process facts ---
    def set_model(self, family: str, model: str, device: str, dtype: str) -> None:
        self.info.labels(self.capability, family, model, device, dtype).set(1)

    def track_device_memory(self, read: Callable[[], int | None]) -> None:
        """Reads device memory at scrape time rather than on a timer."""
        self.device_memory.set_function(lambda: float(read() or 0))

    def serve(self, host: str, port: int) -> int:
        """Starts the /metrics HTTP server in a daemon thread; returns the bound port."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = (server, thread)
        return int(server.server_port)

    def stop(self) -> None:
        if self._http is not None:
            server, _thread = self._http
            threading.Thread(target=server.shutdown, daemon=True).start()
            self._http = None
