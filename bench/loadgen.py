"""A bounded gRPC load generator (grpc.aio) for every capability: a library and a CLI.

    python -m bench.loadgen --target 127.0.0.1:50051 --capability t2i --concurrency 8 \\
        --duration 30 [--stream] [--metrics-url http://127.0.0.1:9091/metrics] [--pid PID]

`concurrency` workers each send one request at a time (closed loop) until `duration` has passed;
every call has a deadline (`--timeout`), and calls still running at the end get at most that
long to finish, so a run never outlasts duration + timeout. It reports throughput, latency
percentiles (per status code: a rejection's latency matters as much as a success's), errors by
status code (with how many carried google.rpc.RetryInfo), the queue depth seen in stream events
(`--stream`) and on the service's /metrics, and the server's resident memory sampled over the run
(from /metrics `process_resident_memory_bytes`, or /proc/<pid> for a local process).

The default request of each capability is small (a 64x64 PNG, a few steps or tokens); pass a
`request_factory` to `run_load` for anything else. Used by tests/reliability/load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import json
import math
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from mmserve.common.v1 import chat_pb2, media_pb2
from mmserve.omni.v1 import omni_pb2, omni_pb2_grpc
from mmserve.t2i.v1 import t2i_pb2, t2i_pb2_grpc
from mmserve.vision.v1 import vision_pb2, vision_pb2_grpc
from mmserve.vl.v1 import vl_pb2, vl_pb2_grpc

CAPABILITIES = ("t2i", "vl", "vision", "omni")
_MiB = 1024 * 1024


@dataclass(frozen=True)
class LoadSpec:
    """What to send, how hard and for how long."""

    target: str
    capability: str
    concurrency: int = 4
    duration_s: float = 10.0
    stream: bool = False  # the Stream* twin (t2i, vl, omni): queue depth from its events
    timeout_s: float = 60.0  # deadline of each call
    api_key: str = ""
    metrics_url: str = ""  # the service's /metrics: queue depth and RSS
    pid: int | None = None  # a local server process: RSS from /proc
    sample_interval_s: float = 0.5
    pause_after_reject_s: float = 0.02  # a rejected worker waits this long (no busy spin)
    honor_retry_info: bool = False  # ...or as long as the rejection's RetryInfo says
    prompt: str = "a red bicycle leaning on a wall"
    steps: int = 2  # t2i denoising steps
    size: int | None = None  # t2i width and height; None: the model's default
    max_new_tokens: int = 8  # vl and omni

    def __post_init__(self) -> None:
        if self.capability not in CAPABILITIES:
            raise ValueError(f"capability must be one of {', '.join(CAPABILITIES)}")
        if self.concurrency < 1 or self.duration_s <= 0 or self.timeout_s <= 0:
            raise ValueError("concurrency >= 1, duration and timeout > 0")
        if self.stream and self.capability == "vision":
            raise ValueError("vision has no streaming RPC")


@dataclass(frozen=True)
class CallRecord:
    started: float  # seconds since the run started
    latency_s: float
    code: str  # grpc.StatusCode name
    retry_info: bool = False  # the error carried google.rpc.RetryInfo
    retry_delay_s: float = 0.0
    queue_length: int | None = None  # the longest queue a stream reported while waiting


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the run started
    queue_depth: float | None = None
    rss_bytes: int | None = None
    open_fds: float | None = None
    threads: int | None = None  # a local server process: from /proc


@dataclass
class LoadReport:
    spec: LoadSpec
    elapsed_s: float
    calls: list[CallRecord] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def by_code(self) -> dict[str, int]:
        return dict(Counter(call.code for call in self.calls))

    def latencies(self, code: str = "OK") -> list[float]:
        return sorted(call.latency_s for call in self.calls if call.code == code)

    def rss(self) -> list[int]:
        return [s.rss_bytes for s in self.samples if s.rss_bytes is not None]

    def open_fds(self) -> list[int]:
        return [int(s.open_fds) for s in self.samples if s.open_fds is not None]

    def threads(self) -> list[int]:
        return [s.threads for s in self.samples if s.threads is not None]

    def queue_depths(self) -> list[float]:
        seen = [s.queue_depth for s in self.samples if s.queue_depth is not None]
        seen += [float(c.queue_length) for c in self.calls if c.queue_length is not None]
        return seen

    def summary(self) -> dict[str, Any]:
        codes = self.by_code()
        rss = self.rss()
        depths = self.queue_depths()
        summary: dict[str, Any] = {
            "capability": self.spec.capability,
            "target": self.spec.target,
            "rpc": "stream" if self.spec.stream else "unary",
            "concurrency": self.spec.concurrency,
            "elapsed_s": round(self.elapsed_s, 3),
            "calls": len(self.calls),
            "ok": codes.get("OK", 0),
            "throughput_ok_per_s": round(codes.get("OK", 0) / self.elapsed_s, 3),
            "codes": codes,
            "latency_s": {
                code: _percentiles(self.latencies(code)) for code in sorted(codes, key=str)
            },
            "with_retry_info": dict(Counter(c.code for c in self.calls if c.retry_info)),
            "queue_depth": {
                "max": max(depths) if depths else None,
                "mean": round(sum(depths) / len(depths), 2) if depths else None,
            },
            "rss_mib": _rss_summary(rss),
            "open_fds": _count_summary(self.open_fds()),
            "threads": _count_summary(self.threads()),
        }
        summary["latency_ok_p50_s"] = summary["latency_s"].get("OK", {}).get("p50")
        summary["latency_ok_p99_s"] = summary["latency_s"].get("OK", {}).get("p99")
        return summary

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "calls": [asdict(c) for c in self.calls],
            "samples": [asdict(s) for s in self.samples],
        }


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted `values` (q in [0, 100])."""
    if not values:
        raise ValueError("no values")
    rank = max(1, math.ceil(q / 100 * len(values)))
    return values[min(rank, len(values)) - 1]


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "p50": round(percentile(values, 50), 4),
        "p99": round(percentile(values, 99), 4),
        "max": round(values[-1], 4),
    }


def _count_summary(counts: list[int]) -> dict[str, int] | None:
    if not counts:
        return None
    return {"first": counts[0], "last": counts[-1], "max": max(counts)}


def _rss_summary(rss: list[int]) -> dict[str, float] | None:
    if not rss:
        return None
    return {
        "first": round(rss[0] / _MiB, 1),
        "last": round(rss[-1] / _MiB, 1),
        "max": round(max(rss) / _MiB, 1),
        "growth": round((rss[-1] - rss[0]) / _MiB, 1),
    }


# --- requests ---------------------------------------------------------------------------------


@functools.cache
def sample_png(size: int = 64) -> bytes:
    """A small gradient PNG (made once; PIL comes with the project)."""
    from PIL import Image

    image = Image.new("RGB", (size, size))
    image.putdata([(x * 4 % 256, y * 4 % 256, 128) for y in range(size) for x in range(size)])
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def default_request(spec: LoadSpec) -> Any:
    """The request every call sends, unless a factory is given."""
    image = media_pb2.Image(data=sample_png(), format=media_pb2.IMAGE_FORMAT_PNG)
    sampling = chat_pb2.SamplingParams(max_new_tokens=spec.max_new_tokens)
    if spec.capability == "t2i":
        params = t2i_pb2.GenerationParams(prompt=spec.prompt, num_inference_steps=spec.steps)
        if spec.size is not None:
            params.width = params.height = spec.size
        return t2i_pb2.TextToImageRequest(params=params)
    if spec.capability == "vl":
        content = [vl_pb2.ContentPart(image=image), vl_pb2.ContentPart(text=spec.prompt)]
        message = vl_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=content)
        return vl_pb2.ChatRequest(messages=[message], sampling=sampling)
    if spec.capability == "vision":
        return vision_pb2.EmbedImagesRequest(images=[image])
    message = omni_pb2.ChatMessage(
        role=chat_pb2.ROLE_USER, content=[omni_pb2.ContentPart(text=spec.prompt)]
    )
    return omni_pb2.ChatRequest(messages=[message], sampling=sampling)


def method_for(spec: LoadSpec, channel: grpc.aio.Channel) -> Callable[..., Any]:
    """The stub method a spec calls: the capability's main RPC, or its Stream* twin."""
    if spec.capability == "t2i":
        t2i = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
        return t2i.StreamTextToImage if spec.stream else t2i.TextToImage
    if spec.capability == "vl":
        vl = vl_pb2_grpc.VisionLanguageServiceStub(channel)
        return vl.StreamChat if spec.stream else vl.Chat
    if spec.capability == "vision":
        return vision_pb2_grpc.VisionServiceStub(channel).EmbedImages
    omni = omni_pb2_grpc.OmniServiceStub(channel)
    return omni.StreamChat if spec.stream else omni.Chat


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """The RetryInfo delay of an error's google.rpc details, None without one."""
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        for detail in status_pb2.Status.FromString(value).details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return info.retry_delay.ToTimedelta().total_seconds()
    return None


# --- sampling the server -----------------------------------------------------------------------


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            try:
                return float(line.rsplit(" ", 1)[1])
            except ValueError:
                return None
    return None


def _proc_status(pid: int, field: str) -> int | None:
    """A numeric field of /proc/<pid>/status (first number of the line)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _proc_rss(pid: int) -> int | None:
    kib = _proc_status(pid, "VmRSS")
    return None if kib is None else kib * 1024


def _proc_fds(pid: int) -> int | None:
    try:
        return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None


def read_sample(spec: LoadSpec, at: float) -> Sample:
    """One look at the server (blocking: run it in a thread)."""
    depth = rss = fds = None
    if spec.metrics_url:
        try:
            with urllib.request.urlopen(spec.metrics_url, timeout=2) as reply:
                text = reply.read().decode()
            depth = _metric(text, "mmserve_queue_depth")
            value = _metric(text, "process_resident_memory_bytes")
            rss = None if value is None else int(value)
            fds = _metric(text, "process_open_fds")
        except OSError:
            pass
    threads = None
    if spec.pid is not None:
        rss = _proc_rss(spec.pid) or rss
        fds = _proc_fds(spec.pid) or fds
        threads = _proc_status(spec.pid, "Threads")
    return Sample(at, depth, rss, fds, threads)


# --- the run ----------------------------------------------------------------------------------


async def _one_call(
    spec: LoadSpec, method: Callable[..., Any], request: Any, t0: float
) -> CallRecord:
    metadata = (("authorization", f"Bearer {spec.api_key}"),) if spec.api_key else None
    started = time.monotonic()
    longest: int | None = None
    try:
        if spec.stream:
            call = method(request, timeout=spec.timeout_s, metadata=metadata)
            async for event in call:
                kind = event.WhichOneof("event")
                queue = (
                    event.accepted.queue
                    if kind == "accepted"
                    else event.queue
                    if kind == "queue"
                    else None
                )
                if queue is not None:
                    longest = max(longest or 0, queue.queue_length)
        else:
            await method(request, timeout=spec.timeout_s, metadata=metadata)
        code, delay = "OK", None
    except grpc.aio.AioRpcError as error:
        code, delay = error.code().name, retry_delay(error)
    return CallRecord(
        started=started - t0,
        latency_s=time.monotonic() - started,
        code=code,
        retry_info=delay is not None,
        retry_delay_s=delay or 0.0,
        queue_length=longest,
    )


async def run_load(
    spec: LoadSpec,
    request_factory: Callable[[LoadSpec, int], Any] | None = None,
    channel: grpc.aio.Channel | None = None,
) -> LoadReport:
    """Runs the load and returns every call and sample. `request_factory(spec, worker)` makes
    each request (default: `default_request`); `channel` reuses a caller's channel."""
    own = channel is None
    if channel is None:
        channel = grpc.aio.insecure_channel(
            spec.target,
            options=[
                ("grpc.max_send_message_length", 64 * _MiB),
                ("grpc.max_receive_message_length", 64 * _MiB),
            ],
        )
    method = method_for(spec, channel)
    make = request_factory or (lambda s, _worker: default_request(s))
    t0 = time.monotonic()
    end = t0 + spec.duration_s
    report = LoadReport(spec, 0.0)
    done = asyncio.Event()

    async def worker(index: int) -> None:
        while time.monotonic() < end:
            record = await _one_call(spec, method, make(spec, index), t0)
            report.calls.append(record)
            if record.code == "RESOURCE_EXHAUSTED":
                pause = spec.pause_after_reject_s
                if spec.honor_retry_info and record.retry_info:
                    pause = max(pause, record.retry_delay_s)
                await asyncio.sleep(min(pause, max(0.0, end - time.monotonic())))

    async def sampler() -> None:
        if not spec.metrics_url and spec.pid is None:
            return
        while True:
            sample = await asyncio.to_thread(read_sample, spec, time.monotonic() - t0)
            report.samples.append(sample)
            if done.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), spec.sample_interval_s)

    sampling = asyncio.create_task(sampler())
    try:
        workers = [asyncio.create_task(worker(i)) for i in range(spec.concurrency)]
        # Bounded: each call has a deadline, so workers end within duration + timeout (+ slack).
        _, pending = await asyncio.wait(workers, timeout=spec.duration_s + spec.timeout_s + 5)
        for task in pending:
            task.cancel()
        report.elapsed_s = time.monotonic() - t0
        done.set()
        await asyncio.wait_for(sampling, timeout=10)
    finally:
        sampling.cancel()
        if own:
            await channel.close()
    return report


def format_summary(summary: dict[str, Any]) -> str:
    latency = summary["latency_s"]
    lines = [
        f"{summary['capability']} {summary['rpc']} x{summary['concurrency']} -> "
        f"{summary['target']}: {summary['calls']} calls in {summary['elapsed_s']} s, "
        f"{summary['throughput_ok_per_s']} OK/s",
        *(
            f"  {code}: {count} calls, latency p50 {latency[code].get('p50')} s, "
            f"p99 {latency[code].get('p99')} s, max {latency[code].get('max')} s"
            + (
                f", {summary['with_retry_info'][code]} with RetryInfo"
                if code in summary["with_retry_info"]
                else ""
            )
            for code, count in sorted(summary["codes"].items())
        ),
        f"  queue depth: max {summary['queue_depth']['max']}, "
        f"mean {summary['queue_depth']['mean']}",
        f"  server RSS (MiB): {summary['rss_mib']}",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--target", required=True, help="host:port of a service or the edge.")
    parser.add_argument("--capability", required=True, choices=CAPABILITIES)
    parser.add_argument("--concurrency", type=int, default=4, help="Concurrent callers.")
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds of load.")
    parser.add_argument("--stream", action="store_true", help="Use the Stream* RPC.")
    parser.add_argument("--timeout", type=float, default=60.0, help="Deadline of each call.")
    parser.add_argument("--api-key", default="", help="Sent as 'authorization: Bearer KEY'.")
    parser.add_argument("--metrics-url", default="", help="The service's /metrics URL.")
    parser.add_argument("--pid", type=int, default=None, help="Local server pid (RSS).")
    parser.add_argument("--sample-interval", type=float, default=0.5)
    parser.add_argument("--pause-after-reject", type=float, default=0.02)
    parser.add_argument("--honor-retry-info", action="store_true")
    parser.add_argument("--prompt", default=LoadSpec.prompt)
    parser.add_argument("--steps", type=int, default=2, help="t2i steps.")
    parser.add_argument("--size", type=int, default=None, help="t2i width and height.")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="vl and omni.")
    parser.add_argument("--json", type=Path, default=None, help="Write the full report here.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = LoadSpec(
            target=args.target,
            capability=args.capability,
            concurrency=args.concurrency,
            duration_s=args.duration,
            stream=args.stream,
            timeout_s=args.timeout,
            api_key=args.api_key,
            metrics_url=args.metrics_url,
            pid=args.pid,
            sample_interval_s=args.sample_interval,
            pause_after_reject_s=args.pause_after_reject,
            honor_retry_info=args.honor_retry_info,
            prompt=args.prompt,
            steps=args.steps,
            size=args.size,
            max_new_tokens=args.max_new_tokens,
        )
    except ValueError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    report = asyncio.run(run_load(spec))
    print(format_summary(report.summary()))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
