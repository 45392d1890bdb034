"""vision benchmark: images/s from encoded JPEG bytes to image embeddings.

The same CLIP model (ViT-B/32 size with random weights; the tiny CLIP with --quick) and the same
640x480 JPEGs go through
- in-process: PIL decode + the model's processor + get_image_features, the model card's recipe,
  N images per call at concurrency N (the batched baseline);
- served: `python -m services.vision` (default batching: whatever queued while the device was
  busy, up to 32), EmbedImages with one JPEG per call from N concurrent clients on one channel,
  straight to its port and through Envoy;
- LitServe (requirements-bench.txt): a LitAPI with the same model, dynamic batching (max batch
  16, 10 ms), requests as base64 JSON (how its users send images), from N client threads.

Part of the runner: `python -m bench.run --capabilities vision` (this file run as a script is the
same); `--litserve-worker` is its internal entry point for the LitServe process.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import from the repository, not from bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # bench/profile.py shadows stdlib's

from bench import kit
from gateway.processes import free_port

LITSERVE_BATCH = 16
LITSERVE_BATCH_TIMEOUT = 0.01  # seconds; LitServe's docs use 0.01-0.05 for dynamic batching


def make_jpegs(count: int, size: tuple[int, int] = (640, 480)) -> list[bytes]:
    """Photo-sized JPEGs with structure (gradients, blocks) and noise, ~40-160 KB each."""
    import numpy as np
    from PIL import Image

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


# --- in-process ---------------------------------------------------------------------------------


class InProcess:
    """The model card's recipe: PIL decode, processor, model, one call per batch; on the device
    and dtype the server uses, with its towers compiled as the service compiles them."""

    def __init__(self, folder: Path, device: str, dtype: str, compile: bool) -> None:
        from transformers import AutoProcessor, CLIPModel

        from services.runtime.devices import maybe_compile

        self.device, self.dtype = device, kit.torch_dtype(dtype)
        self.model = CLIPModel.from_pretrained(folder).eval().to(device, self.dtype)
        if compile:
            maybe_compile(self.model.vision_model, True)
        self.processor = AutoProcessor.from_pretrained(folder)

    def embed(self, jpegs: Sequence[bytes]) -> Any:
        import torch
        from PIL import Image

        with torch.inference_mode():
            images = [Image.open(io.BytesIO(data)).convert("RGB") for data in jpegs]
            pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
            pixels = pixels.to(self.device, self.dtype)
            features = self.model.get_image_features(pixel_values=pixels)
            return getattr(features, "pooler_output", features).float().cpu().numpy()

    def measure(self, jpegs: Sequence[bytes], batch: int) -> kit.Run:
        samples = []
        started = time.perf_counter()
        for start in range(0, len(jpegs), batch):
            chunk = jpegs[start : start + batch]
            t0 = time.perf_counter()
            self.embed(chunk)
            took = time.perf_counter() - t0
            # Every image of a batch is done when the batch is: each gets the batch's latency.
            samples += [kit.Sample(took, batch=len(chunk)) for _ in chunk]
        return kit.Run(time.perf_counter() - started, len(jpegs), samples)


# --- served (gRPC) ------------------------------------------------------------------------------


class GrpcClient(kit.ChannelClient):
    """EmbedImages with one JPEG per call, N concurrent callers on one grpc.aio channel."""

    def __init__(self, target: str, loop: kit.Loop) -> None:
        from mmserve.vision.v1 import vision_pb2_grpc

        super().__init__(target, loop)
        self.stub = vision_pb2_grpc.VisionServiceStub(self.channel)

    def measure(self, jpegs: Sequence[bytes], clients: int) -> kit.Run:
        from mmserve.common.v1 import media_pb2
        from mmserve.vision.v1 import vision_pb2

        requests = [
            vision_pb2.EmbedImagesRequest(
                images=[media_pb2.Image(data=data, format=media_pb2.IMAGE_FORMAT_JPEG)]
            )
            for data in jpegs
        ]

        async def call(index: int) -> tuple[kit.Sample, float]:
            t0 = time.perf_counter()
            reply = await self.stub.EmbedImages(requests[index], timeout=600)
            usage = reply.usage
            return kit.Sample(time.perf_counter() - t0, usage.queue_seconds, usage.batch_size), 1.0

        return self.run_closed_loop(call, len(requests), clients)


# --- LitServe -----------------------------------------------------------------------------------


try:  # LitServe is only installed for the benchmarks (make bench-deps)
    import litserve as ls
except ImportError:  # pragma: no cover - the runner then skips the LitServe path
    ls = None

if ls is not None:

    class ClipAPI(ls.LitAPI):
        """The same model behind LitServe: decode + processor per request, then a batch of
        pixel tensors through the model (at module level: LitServe pickles it into workers)."""

        def __init__(self, folder: str, threads: int, dtype: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.folder, self.threads, self.dtype_name = folder, threads, dtype

        def setup(self, device: str) -> None:
            import torch
            from transformers import AutoProcessor, CLIPModel

            if self.threads:
                torch.set_num_threads(self.threads)
            self.device, self.dtype = device, kit.torch_dtype(self.dtype_name)
            self.model = CLIPModel.from_pretrained(self.folder).eval().to(device, self.dtype)
            self.processor = AutoProcessor.from_pretrained(self.folder)

        # Unannotated on purpose: LitServe builds its FastAPI body type from this annotation,
        # and a postponed (string) one makes it reject every request with 422.
        def decode_request(self, request):  # type: ignore[no-untyped-def]
            from PIL import Image

            data = base64.b64decode(request["image"])
            image = Image.open(io.BytesIO(data)).convert("RGB")
            return self.processor(images=[image], return_tensors="pt")["pixel_values"][0]

        def batch(self, inputs: list[Any]) -> Any:
            import torch

            return torch.stack(inputs)

        def predict(self, pixel_values: Any) -> Any:
            import torch

            with torch.inference_mode():
                pixels = pixel_values.to(self.device, self.dtype)
                features = self.model.get_image_features(pixel_values=pixels)
                return getattr(features, "pooler_output", features).float().cpu()

        def unbatch(self, output: Any) -> list[Any]:
            return list(output)

        def encode_response(self, output: Any) -> dict[str, Any]:
            return {"embedding": output.tolist()}


def litserve_available() -> bool:
    return ls is not None


def litserve_worker(folder: str, port: int, threads: int, device: str, dtype: str) -> None:
    """Runs in its own process (`python -m bench.vision_bench --litserve-worker ...`)."""
    assert ls is not None, "pip install -r requirements-bench.txt (make bench-deps)"
    api = ClipAPI(
        folder,
        threads,
        dtype,
        max_batch_size=LITSERVE_BATCH,
        batch_timeout=LITSERVE_BATCH_TIMEOUT,
    )
    accelerator = "cuda" if device.startswith("cuda") else "cpu"
    server = ls.LitServer(
        api, accelerator=accelerator, devices=1, workers_per_device=1, timeout=600
    )
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")


class LitClient:
    """LitServe in a subprocess; N client threads, each with a keep-alive HTTP connection,
    posting {"image": base64 JPEG} as JSON."""

    def __init__(self, folder: Path, plan: kit.Plan, log: Path) -> None:
        self.port = free_port()
        command = [
            sys.executable, "-m", "bench.vision_bench", "--litserve-worker",
            str(folder), str(self.port), str(plan.threads), plan.device, plan.dtype,
        ]  # fmt: skip
        with log.open("wb") as out:
            # Its own process group: LitServe spawns API and inference worker processes that
            # outlive a terminated parent, and close() must end them all.
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, cwd=kit.REPO, start_new_session=True
            )
        self.log = log
        self._wait_ready(600)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"LitServe exited with {self.process.returncode}: {self.log.read_text()}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"LitServe not ready in {timeout}s")

    def measure(self, jpegs: Sequence[bytes], clients: int) -> kit.Run:
        bodies = [json.dumps({"image": base64.b64encode(j).decode()}).encode() for j in jpegs]
        indexes = iter(range(len(bodies)))
        lock = threading.Lock()
        samples: list[kit.Sample] = []
        errors: list[BaseException] = []

        def client() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
            headers = {"Content-Type": "application/json"}
            try:
                while True:
                    with lock:
                        index = next(indexes, None)
                    if index is None:
                        return
                    t0 = time.perf_counter()
                    connection.request("POST", "/predict", bodies[index], headers)
                    response = connection.getresponse()
                    payload = response.read()
                    if response.status != 200:
                        raise RuntimeError(f"LitServe answered {response.status}: {payload!r}")
                    json.loads(payload)
                    with lock:
                        samples.append(kit.Sample(time.perf_counter() - t0))
            except BaseException as exc:  # surfaced after join
                errors.append(exc)
            finally:
                connection.close()

        workers = [threading.Thread(target=client) for _ in range(min(clients, len(bodies)))]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if errors:
            raise errors[0]
        return kit.Run(time.perf_counter() - started, len(jpegs), samples)

    def close(self) -> None:
        group = self.process.pid  # the session leader's pid is the group id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        time.sleep(1.0)  # let the spawned workers see the signal
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


# --- the benchmark ------------------------------------------------------------------------------


def benchmark(
    plan: kit.Plan, log: Callable[[str], None] = print
) -> tuple[list[kit.Cell], list[str]]:
    """Every vision cell of the plan, measured in interleaved rounds. Returns the cells and
    notes for the report."""
    from bench.models import vision_model_dir

    folder = vision_model_dir(plan.profile)
    levels = plan.concurrency["vision"]
    counts: dict[int, int] = plan.sizes["vision_images"]
    width, height = plan.sizes["vision_image_size"]
    jpegs = make_jpegs(max(counts.values()), (width, height))
    notes = [
        f"vision: {len(jpegs)} distinct {width}x{height} JPEGs "
        f"(mean {sum(map(len, jpegs)) / len(jpegs) / 1024:.0f} KB); one image per served call"
    ]
    with kit.teardown() as (loop, closers):
        log("vision: loading the in-process model and starting the server")
        local = InProcess(folder, plan.device, plan.dtype, plan.compile)
        args = ["--model", str(folder), *plan.server_flags("vision")]
        server = kit.start_served("vision", args, envoy=plan.envoy)
        closers.append(server.stop)
        clients = {path: GrpcClient(target, loop) for path, target in server.targets().items()}
        closers += [c.close for c in clients.values()]
        lit = None
        if plan.litserve and litserve_available():
            lit = LitClient(folder, plan, server.log_dir / "litserve.log")
            closers.append(lit.close)
        elif plan.litserve:
            notes.append("vision: LitServe not installed (make bench-deps): its rows are missing")

        def warm_local() -> None:
            local.measure(jpegs[:2], 1)
            local.measure(jpegs[: max(levels)], max(levels))

        specs: list[kit.CellSpec] = []
        warmed: set[str] = set()

        def add(path: str, clients_n: int, measure: Callable[[], kit.Run], warm: Any) -> None:
            first = path not in warmed
            warmed.add(path)
            cell = kit.Cell("vision", path, clients_n, "img")
            specs.append(kit.CellSpec(cell, measure, warm if first else (lambda: None)))

        for n in levels:
            images = jpegs[: counts[n]]
            add(kit.IN_PROCESS, n, lambda images=images, n=n: local.measure(images, n), warm_local)
            for path, client in plan.paths_at("vision", n, clients).items():
                add(
                    path,
                    n,
                    lambda images=images, n=n, client=client: client.measure(images, n),
                    lambda client=client: client.measure(jpegs[: max(levels)], max(levels)),
                )
            if lit is not None:
                add(
                    kit.LITSERVE,
                    n,
                    lambda images=images, n=n: lit.measure(images, n),
                    lambda: lit.measure(jpegs[: max(levels)], max(levels)),
                )
        cells = kit.measure_rounds(_ordered(specs), plan.repeats_for("vision"), log)
    return cells, notes


def _ordered(specs: list[kit.CellSpec]) -> list[kit.CellSpec]:
    order = {kit.SERVED: 1, kit.ENVOY: 2, kit.IN_PROCESS: 0, kit.LITSERVE: 3}
    return sorted(specs, key=lambda s: (s.cell.concurrency, order[s.cell.path]))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--litserve-worker"]:
        folder, port, threads, device, dtype = args[1:6]
        litserve_worker(folder, int(port), int(threads), device, dtype)
        return 0
    return kit.script_main("vision", args)


if __name__ == "__main__":
    sys.exit(main())
