"""vision benchmark: images/s from encoded JPEG bytes to image embeddings.

The same CLIP ViT-B/32-sized model (random weights, built locally: services.vision.tiny) and the
same JPEG files go through
- in-process: PIL decode + the model's processor + get_image_features, one after the other, at
  batch 1 and at batch B (16, and the mean batch size the server reached);
- served: `python -m services.vision` in a subprocess, EmbedImages with one image per call over
  loopback gRPC, from 1 client and from N concurrent clients (default 16);
- LitServe (pip install litserve): a LitAPI with the same model, dynamic batching (max batch
  16), requests as base64 JSON (how its users send images), from 1 and N client threads.
Then the added latency of one served call over the in-process call (p50), for the B/32 model and
for the tiny CLIP (whose compute is small, so the serving overhead is visible above the noise).

The machine this was written on is shared and its load swings by several x within a minute, so
the paths are measured in interleaved rounds (every path once per round, same inputs) and each
row sums its rounds: every path sees the same mix of quiet and busy moments.

Prints markdown tables. Usage (from the repository root; a few minutes on 2 CPU cores):

    .venv/bin/python bench/vision_bench.py
    .venv/bin/python bench/vision_bench.py --images 32 --clients 8 --skip-litserve

Every process uses torch's default thread count unless --threads is given.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from grpc_health.v1 import health_pb2  # noqa: E402
from PIL import Image  # noqa: E402

from mmserve.common.v1 import media_pb2  # noqa: E402
from mmserve.vision.v1 import vision_pb2, vision_pb2_grpc  # noqa: E402
from services.vision.capability import SERVICE  # noqa: E402
from services.vision.tiny import clip_b32_dir, tiny_clip_dir  # noqa: E402
from tests.support.servers import ServerProcess, start_process, wait_for_health  # noqa: E402

LITSERVE_BATCH = 16
LITSERVE_BATCH_TIMEOUT = 0.01  # seconds; LitServe's docs use 0.01-0.05 for dynamic batching


# --- inputs ------------------------------------------------------------------------------------


def make_jpegs(count: int, size: tuple[int, int] = (640, 480)) -> list[bytes]:
    """Photo-sized JPEGs with structure (gradients, blocks) and noise, ~40-80 KB each."""
    rng = np.random.default_rng(0)
    width, height = size
    out = []
    for index in range(count):
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack(
            [
                (x * (index + 1) % 256),
                (y * 2 + index * 17) % 256,
                ((x + y) // 3 + index * 41) % 256,
            ],
            axis=-1,
        ).astype(np.float32)
        noise = rng.normal(0, 18, size=base.shape)
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


@dataclass
class Run:
    """One measurement: wall seconds for all images, per-call latencies, batch sizes seen."""

    images: int
    seconds: float
    latencies_ms: list[float]
    batches: list[int] = field(default_factory=list)


@dataclass
class Row:
    """A path's runs over every round."""

    name: str
    batch: str = ""
    images: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)

    def add(self, run: Run) -> None:
        self.images += run.images
        self.seconds += run.seconds
        self.latencies_ms += run.latencies_ms
        self.batches += run.batches

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds else float("nan")

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 50)

    def batch_text(self) -> str:
        if not self.batches:
            return self.batch
        return f"mean {statistics.mean(self.batches):.1f}, max {max(self.batches)}"


# --- in-process --------------------------------------------------------------------------------


class InProcess:
    """The model card's recipe: PIL decode, processor, model, one after the other."""

    def __init__(self, folder: Path) -> None:
        from transformers import AutoProcessor, CLIPModel

        self.model = CLIPModel.from_pretrained(folder).eval()
        self.processor = AutoProcessor.from_pretrained(folder)

    @torch.inference_mode()
    def embed(self, jpegs: Sequence[bytes]) -> np.ndarray:
        images = [Image.open(io.BytesIO(data)).convert("RGB") for data in jpegs]
        inputs = self.processor(images=images, return_tensors="pt")
        return self.model.get_image_features(**inputs).pooler_output.numpy()

    def measure(self, jpegs: Sequence[bytes], batch: int) -> Run:
        latencies = []
        started = time.perf_counter()
        for start in range(0, len(jpegs), batch):
            t0 = time.perf_counter()
            self.embed(jpegs[start : start + batch])
            latencies.append((time.perf_counter() - t0) * 1000)
        return Run(len(jpegs), time.perf_counter() - started, latencies)


class EngineInProcess:
    """The service's own code without the service: runtime decode_image, the engine's
    preprocessing and its batch function, called in turn on this thread. Served minus this is
    what gRPC, the executor and the thread hops add."""

    def __init__(self, folder: Path, threads: int) -> None:
        from services.vision.config import VisionSettings
        from services.vision.engine import VisionEngine

        self.engine = VisionEngine(VisionSettings(model=str(folder), torch_threads=threads))
        self.engine.load()
        self.engine.warmup()

    def measure(self, jpegs: Sequence[bytes], batch: int) -> Run:
        from services.runtime.executor import JobContext
        from services.runtime.images import ImageLimits, decode_image
        from services.vision.inputs import ImageJob

        limits = ImageLimits()
        latencies = []
        started = time.perf_counter()
        for start in range(0, len(jpegs), batch):
            t0 = time.perf_counter()
            images = [
                decode_image(j, field="image", limits=limits) for j in jpegs[start : start + batch]
            ]
            job = ImageJob(self.engine.prepare_images(images), "cls")
            self.engine.embed_images_batch([job], [JobContext("bench", "embed_images")])
            latencies.append((time.perf_counter() - t0) * 1000)
        return Run(len(jpegs), time.perf_counter() - started, latencies)


# --- served (gRPC) -----------------------------------------------------------------------------


def start_vision(folder: Path, log: Path, threads: int) -> ServerProcess:
    # Default log level: start_process waits for the INFO "listening" line.
    argv = ["--model", str(folder)]
    if threads:
        argv += ["--torch-threads", str(threads)]
    return start_process("services.vision", argv, log, timeout=300)


def jpeg_request(data: bytes) -> vision_pb2.EmbedImagesRequest:
    image = media_pb2.Image(data=data, format=media_pb2.IMAGE_FORMAT_JPEG)
    return vision_pb2.EmbedImagesRequest(images=[image])


class Served:
    """A client of `python -m services.vision`: one channel on its own event loop, N concurrent
    callers sending one image per EmbedImages call."""

    def __init__(self, process: ServerProcess) -> None:
        self.process = process
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._connect())

    async def _connect(self) -> None:
        self.channel = grpc.aio.insecure_channel(self.process.target)
        await wait_for_health(self.channel, health_pb2.HealthCheckResponse.SERVING, SERVICE, 300)
        self.stub = vision_pb2_grpc.VisionServiceStub(self.channel)

    def measure(self, jpegs: Sequence[bytes], clients: int) -> Run:
        return self.loop.run_until_complete(self._measure(jpegs, clients))

    async def _measure(self, jpegs: Sequence[bytes], clients: int) -> Run:
        queue = list(range(len(jpegs)))
        latencies: list[float] = []
        batches: list[int] = []

        async def client() -> None:
            while queue:
                index = queue.pop(0)
                t0 = time.perf_counter()
                reply = await self.stub.EmbedImages(jpeg_request(jpegs[index]), timeout=300)
                latencies.append((time.perf_counter() - t0) * 1000)
                batches.append(reply.usage.batch_size)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return Run(len(jpegs), time.perf_counter() - started, latencies, batches)

    def close(self) -> None:
        self.loop.run_until_complete(self.channel.close())
        self.loop.close()
        self.process.stop()


# --- LitServe ----------------------------------------------------------------------------------


try:  # LitServe is only installed for this benchmark
    import litserve as ls
except ImportError:  # pragma: no cover - the run then needs --skip-litserve
    ls = None

if ls is not None:

    class ClipAPI(ls.LitAPI):
        """The same model behind LitServe: decode + processor per request, then a batch of
        pixel tensors through the model (at module level: LitServe pickles it into workers)."""

        def __init__(self, folder: str, threads: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.folder = folder
            self.threads = threads

        def setup(self, device: str) -> None:
            from transformers import AutoProcessor, CLIPModel

            if self.threads:
                torch.set_num_threads(self.threads)
            self.model = CLIPModel.from_pretrained(self.folder).eval()
            self.processor = AutoProcessor.from_pretrained(self.folder)

        # Unannotated on purpose: LitServe builds its FastAPI body type from this annotation,
        # and a postponed (string) one makes it reject every request with 422.
        def decode_request(self, request):  # type: ignore[no-untyped-def]
            data = base64.b64decode(request["image"])
            image = Image.open(io.BytesIO(data)).convert("RGB")
            return self.processor(images=[image], return_tensors="pt")["pixel_values"][0]

        def batch(self, inputs: list[Any]) -> Any:
            return torch.stack(inputs)

        def predict(self, pixel_values: Any) -> Any:
            with torch.inference_mode():
                return self.model.get_image_features(pixel_values=pixel_values).pooler_output

        def unbatch(self, output: Any) -> list[Any]:
            return list(output)

        def encode_response(self, output: Any) -> dict[str, Any]:
            return {"embedding": output.tolist()}


def litserve_worker(folder: str, port: int, threads: int) -> None:
    """Runs in its own process: `vision_bench.py --litserve-worker FOLDER PORT`."""
    assert ls is not None, "pip install litserve, or pass --skip-litserve"
    api = ClipAPI(
        folder, threads, max_batch_size=LITSERVE_BATCH, batch_timeout=LITSERVE_BATCH_TIMEOUT
    )
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=300)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LitClient:
    """LitServe in a subprocess; N client threads, each with a keep-alive HTTP connection,
    posting {"image": base64 JPEG} as JSON."""

    def __init__(self, folder: Path, threads: int, log: Path) -> None:
        self.port = free_port()
        command = [sys.executable, __file__, "--litserve-worker", str(folder), str(self.port)]
        if threads:
            command += ["--threads", str(threads)]
        with log.open("wb") as out:
            # Its own process group: LitServe spawns API and inference worker processes that
            # outlive a terminated parent, and close() must end them all.
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
            )
        self._wait_ready(300)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"LitServe exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"LitServe not ready in {timeout}s")

    def measure(self, jpegs: Sequence[bytes], clients: int) -> Run:
        bodies = [json.dumps({"image": base64.b64encode(j).decode()}).encode() for j in jpegs]
        queue = list(range(len(bodies)))
        lock = threading.Lock()
        latencies: list[float] = []

        def client() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
            headers = {"Content-Type": "application/json"}
            try:
                while True:
                    with lock:
                        if not queue:
                            return
                        index = queue.pop(0)
                    t0 = time.perf_counter()
                    connection.request("POST", "/predict", bodies[index], headers)
                    response = connection.getresponse()
                    payload = response.read()
                    if response.status != 200:
                        raise RuntimeError(f"LitServe answered {response.status}: {payload!r}")
                    json.loads(payload)
                    with lock:
                        latencies.append((time.perf_counter() - t0) * 1000)
            finally:
                connection.close()

        workers = [threading.Thread(target=client) for _ in range(clients)]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return Run(len(jpegs), time.perf_counter() - started, latencies)

    def close(self) -> None:
        group = self.process.pid  # the session leader's pid is the group id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        time.sleep(1.0)  # let the spawned workers see the signal
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


# --- report ------------------------------------------------------------------------------------


def table(rows: Sequence[Row]) -> str:
    lines = [
        "| path | images | img/s | p50 per call (ms) | batch |",
        "|---|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.name} | {row.images} | {row.rate:.2f} | {row.p50:.1f} | {row.batch_text()} |"
        )
    return "\n".join(lines)


def goals_table(checks: Sequence[tuple[str, float, str, bool]]) -> str:
    lines = ["| goal | measured | target | met |", "|---|---:|---:|---|"]
    for name, value, target, met in checks:
        lines.append(f"| {name} | {value:.2f} | {target} | {'yes' if met else 'no'} |")
    return "\n".join(lines)


def rounds(count: int, steps: Sequence[tuple[Row, Callable[[], Run]]]) -> None:
    for number in range(count):
        for row, step in steps:
            row.add(step())
        print(f"round {number + 1}/{count} done", flush=True)


def latency_rows(
    jpegs: Sequence[bytes], calls: int, logs: Path, threads: int
) -> tuple[Row, Row, Row]:
    """One-image calls, one at a time, on the tiny CLIP (whose compute is small, so the serving
    overhead stands out): the model card's recipe, the service's own code in-process, and the
    service; interleaved in 5 rounds."""
    folder = tiny_clip_dir()
    card = InProcess(folder)
    engine = EngineInProcess(folder, threads)
    served = Served(start_vision(folder, logs / "tiny.log", threads))
    rows = (
        Row("tiny CLIP in-process (processor + model), batch 1", "1"),
        Row("tiny CLIP in-process (the service's engine code), batch 1", "1"),
        Row("tiny CLIP served, 1 client"),
    )
    one = list(jpegs[:1]) * calls
    try:
        for path in (card, engine, served):
            path.measure(jpegs[:4], 1)
        rounds(
            5,
            [
                (rows[0], lambda: card.measure(one, 1)),
                (rows[1], lambda: engine.measure(one, 1)),
                (rows[2], lambda: served.measure(one, 1)),
            ],
        )
    finally:
        served.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=16, help="JPEGs per 1-client run")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--tiny-calls", type=int, default=60, help="calls per latency round")
    parser.add_argument("--skip-litserve", action="store_true")
    parser.add_argument(
        "--latency-only", action="store_true", help="only the tiny-CLIP serving overhead rows"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="use the tiny CLIP everywhere (a quick smoke run)"
    )
    parser.add_argument("--litserve-worker", nargs=2, metavar=("FOLDER", "PORT"), help="internal")
    args = parser.parse_args()
    if args.litserve_worker:
        litserve_worker(args.litserve_worker[0], int(args.litserve_worker[1]), args.threads)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.latency_only:
        logs = Path(tempfile.mkdtemp(prefix="vision-bench-"))
        rows = latency_rows(make_jpegs(4), args.tiny_calls, logs, args.threads)
        print(table(rows))
        overhead = rows[2].p50 - rows[1].p50
        print(f"\nserving overhead p50 (served - engine in-process): {overhead:.2f} ms")
        return 0

    t0 = time.perf_counter()
    folder = tiny_clip_dir() if args.tiny else clip_b32_dir()
    print(f"model: {folder} (built/loaded in {time.perf_counter() - t0:.1f}s)", flush=True)
    single = make_jpegs(args.images)
    many = make_jpegs(args.images * 3)
    size_kb = statistics.mean(len(j) for j in many) / 1024
    logs = Path(tempfile.mkdtemp(prefix="vision-bench-"))
    n = args.clients

    local = InProcess(folder)
    served = Served(start_vision(folder, logs / "vision.log", args.threads))
    lit = None if args.skip_litserve else LitClient(folder, args.threads, logs / "litserve.log")
    try:
        # Warm every path (first calls pay lazy initialisation), and learn the batch size the
        # server reaches with N clients, so the in-process loop can run at that size too.
        local.measure(single[:2], 1)
        probe = served.measure(many[: 2 * n], n)
        if lit is not None:
            lit.measure(many[: 2 * n], n)
        reached = max(1, round(statistics.mean(probe.batches)))
        print(f"warm; the server reached a mean batch of {reached} with {n} clients", flush=True)

        local_1 = Row("in-process, batch 1", "1")
        served_1 = Row("served, 1 client")
        lit_1 = Row("LitServe, 1 client", f"<= {LITSERVE_BATCH}")
        local_16 = Row("in-process, batch 16", "16")
        local_r = Row(f"in-process, batch {reached} (server's mean)", str(reached))
        served_n = Row(f"served, {n} clients")
        lit_n = Row(f"LitServe, {n} clients", f"<= {LITSERVE_BATCH}")
        steps: list[tuple[Row, Callable[[], Run]]] = [
            (local_1, lambda: local.measure(single, 1)),
            (served_1, lambda: served.measure(single, 1)),
            (local_16, lambda: local.measure(many, 16)),
            (served_n, lambda: served.measure(many, n)),
        ]
        if reached != 16:
            steps.append((local_r, lambda: local.measure(many, reached)))
        if lit is not None:
            steps += [
                (lit_1, lambda: lit.measure(single, 1)),
                (lit_n, lambda: lit.measure(many, n)),
            ]
        rounds(args.rounds, steps)
    finally:
        served.close()
        if lit is not None:
            lit.close()
    parameters = sum(p.numel() for p in local.model.parameters()) / 1e6

    tiny_rows = latency_rows(single, args.tiny_calls, logs, args.threads)
    print()
    print(
        f"CLIP {'tiny' if args.tiny else 'ViT-B/32'} (random weights, {parameters:.0f} M "
        f"parameters), {size_kb:.0f} KB 640x480 JPEGs, torch threads {torch.get_num_threads()}, "
        f"{os.cpu_count()} CPUs, {args.rounds} interleaved rounds"
    )
    ordered = [local_1, served_1, lit_1, local_16, local_r, served_n, lit_n, *tiny_rows]
    print(table([row for row in ordered if row.images]))
    print()
    added = served_1.p50 - local_1.p50
    added_tiny = tiny_rows[2].p50 - tiny_rows[1].p50
    batched = local_r if local_r.images else local_16
    checks = [
        (
            f"served {n} clients / in-process batch {reached}",
            served_n.rate / batched.rate,
            ">= 1.0",
            served_n.rate >= batched.rate,
        ),
        (
            f"served {n} clients / in-process batch 16",
            served_n.rate / local_16.rate,
            ">= 1.0",
            served_n.rate >= local_16.rate,
        ),
        (
            "served 1 client / in-process batch 1",
            served_1.rate / local_1.rate,
            ">= 0.95",
            served_1.rate >= 0.95 * local_1.rate,
        ),
        ("added latency p50, B/32 (ms)", added, "<= 1", added <= 1.0),
        (
            "added latency p50, tiny CLIP, vs the engine in-process (ms)",
            added_tiny,
            "<= 1",
            added_tiny <= 1.0,
        ),
    ]
    if lit_n.images:
        checks.insert(
            2,
            (
                f"served {n} clients / LitServe {n} clients",
                served_n.rate / lit_n.rate,
                ">= 1.0",
                served_n.rate >= lit_n.rate,
            ),
        )
    print(goals_table(checks))
    print(f"\nlogs: {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
