"""t2i benchmark: what serving adds to a text-to-image job.

One Stable Diffusion-class pipeline (random weights, real classes; bench.models: a small
SD-class UNet at 256x256 on CPU, SD 1.5 shapes at 512x512 on GPU) runs the same job (same
prompt, seed, size, guidance 7.5) through
- in-process: `pipe(...)` itself, PIL images out, on a dedicated thread as the server runs its
  jobs (the baseline); N jobs one after the other at concurrency N;
- served: `python -m services.t2i`, TextToImage (unary) until the PNG bytes are in the client,
  straight to its port and through Envoy, from N concurrent clients (the single-flight executor
  queues the others: see the queue wait);
- served, streamed: StreamTextToImage with one event per step and a latent preview every 5
  steps, 1 client, until the result event.

Part of the runner: `python -m bench.run --capabilities t2i` (this file run as a script is the
same).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import from the repository, not from bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # bench/profile.py shadows stdlib's

from bench import kit

PROMPT = "a watercolor painting of a red fox in the snow"
SEED = 1234
GUIDANCE = 7.5
PREVIEW_EVERY = 5


class InProcess:
    """The diffusers recipe on the server's device and dtype (UNet compiled as the service
    compiles its denoiser), loaded and called on the calling (main) thread, as a user's
    script does."""

    def __init__(self, folder: Path, plan: kit.Plan) -> None:
        import torch
        from diffusers import StableDiffusionPipeline

        from services.runtime.devices import maybe_compile

        dtype = kit.torch_dtype(plan.dtype)
        self.pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=dtype)
        self.pipe.to(plan.device)
        self.pipe.set_progress_bar_config(disable=True)
        if plan.compile:
            maybe_compile(self.pipe.unet, True)
        self.size, self.steps = plan.sizes["t2i_size"], plan.sizes["t2i_steps"]
        self.torch = torch

    def _job(self) -> float:
        started = time.perf_counter()
        with self.torch.inference_mode():
            self.pipe(
                PROMPT,
                height=self.size,
                width=self.size,
                num_inference_steps=self.steps,
                guidance_scale=GUIDANCE,
                generator=[self.torch.Generator("cpu").manual_seed(SEED)],
            )
        return time.perf_counter() - started

    def job(self, _index: int) -> tuple[kit.Sample, float]:
        return kit.Sample(self._job(), batch=1), 1.0

    def measure(self, jobs: int) -> kit.Run:
        return kit.timed_sequence(self.job, jobs)


def request(size: int, steps: int, every: int = 0) -> Any:
    from mmserve.t2i.v1 import t2i_pb2

    return t2i_pb2.TextToImageRequest(
        params=t2i_pb2.GenerationParams(
            prompt=PROMPT,
            width=size,
            height=size,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE,
            seed=SEED,
        ),
        preview=t2i_pb2.PreviewOptions(every_n_steps=every),
    )


class GrpcClient(kit.ChannelClient):
    def __init__(self, target: str, loop: kit.Loop, size: int, steps: int) -> None:
        from mmserve.t2i.v1 import t2i_pb2_grpc

        super().__init__(target, loop)
        self.size, self.steps = size, steps
        self.stub = t2i_pb2_grpc.ImageGenerationServiceStub(self.channel)

    async def unary(self, _index: int) -> tuple[kit.Sample, float]:
        started = time.perf_counter()
        reply = await self.stub.TextToImage(request(self.size, self.steps), timeout=3600)
        assert reply.result.images[0].data.startswith(b"\x89PNG")
        usage = reply.result.usage
        return kit.Sample(time.perf_counter() - started, usage.queue_seconds, usage.batch_size), 1.0

    async def stream(self, _index: int) -> tuple[kit.Sample, float]:
        started = time.perf_counter()
        previews, usage = 0, None
        message = request(self.size, self.steps, PREVIEW_EVERY)
        async for event in self.stub.StreamTextToImage(message, timeout=3600):
            previews += event.step.HasField("preview")
            if event.HasField("result"):
                assert event.result.images[0].data.startswith(b"\x89PNG")
                usage = event.result.usage
        assert previews == self.steps // PREVIEW_EVERY, previews
        assert usage is not None
        return kit.Sample(time.perf_counter() - started, usage.queue_seconds, usage.batch_size), 1.0

    def measure(self, jobs: int, clients: int, streamed: bool = False) -> kit.Run:
        return self.run_closed_loop(self.stream if streamed else self.unary, jobs, clients)


def benchmark(
    plan: kit.Plan, log: Callable[[str], None] = print
) -> tuple[list[kit.Cell], list[str]]:
    from bench.models import t2i_model_dir

    folder = t2i_model_dir(plan.profile)
    size, steps = plan.sizes["t2i_size"], plan.sizes["t2i_steps"]
    levels = plan.concurrency["t2i"]
    notes = [f"t2i: {steps} steps at {size}x{size}, guidance {GUIDANCE}, DDIM; one job per client"]
    with kit.teardown() as (loop, closers):
        log("t2i: loading the in-process pipeline and starting the server")
        local = InProcess(folder, plan)
        args = [
            "--model", str(folder),
            "--max-size", str(max(size, 1024)),
            "--default-width", str(size),
            "--default-height", str(size),
            "--warmup-steps", "2",
            "--eta-base-seconds", "1",
            *plan.server_flags("t2i"),
        ]  # fmt: skip
        server = kit.start_served("t2i", args, envoy=plan.envoy)
        closers.append(server.stop)
        clients = {p: GrpcClient(t, loop, size, steps) for p, t in server.targets().items()}
        closers += [c.close for c in clients.values()]
        specs: list[kit.CellSpec] = []
        for n in levels:
            warm = n == levels[0]
            if plan.in_process_at("t2i", n):
                specs.append(
                    kit.CellSpec(
                        kit.Cell("t2i", kit.IN_PROCESS, n, "job"),
                        lambda n=n: local.measure(n),
                        None if warm else (lambda: None),
                    )
                )
            for path, client in plan.paths_at("t2i", n, clients).items():
                specs.append(
                    kit.CellSpec(
                        kit.Cell("t2i", path, n, "job", "unary"),
                        lambda n=n, client=client: client.measure(n, n),
                        None if warm else (lambda: None),
                    )
                )
        specs.append(
            kit.CellSpec(
                kit.Cell("t2i", kit.SERVED, 1, "job", f"stream, preview every {PREVIEW_EVERY}"),
                lambda: clients[kit.SERVED].measure(1, 1, streamed=True),
            )
        )
        order = {kit.IN_PROCESS: 0, kit.SERVED: 1, kit.ENVOY: 2}
        specs.sort(key=lambda s: (s.cell.concurrency, s.cell.variant.startswith("stream"),
                                  order[s.cell.path]))  # fmt: skip
        cells = kit.measure_rounds(specs, plan.repeats_for("t2i"), log)
    return cells, notes


if __name__ == "__main__":
    sys.exit(kit.script_main("t2i"))
