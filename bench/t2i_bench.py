"""t2i benchmark: what serving adds to a 20-step text-to-image job.

One small Stable Diffusion-class pipeline (random weights, real classes, built locally with
services.t2i.tiny: a 2-block UNet, an 8x VAE, a CLIP text encoder and the real CLIP tokenizer)
runs the same 20-step job (same prompt, seed, size, guidance 7.5) through
- in-process: `pipe(...)` itself, PIL images out (the baseline);
- served, unary: `python -m services.t2i` in a subprocess, TextToImage over loopback gRPC, until
  the PNG bytes are in the client;
- served, streamed: StreamTextToImage with one event per step, until the result event;
- served, streamed with previews: as above plus a latent preview every N steps (default every
  step and every 5 steps).
Each served row is divided by the in-process row (goals from issue 5: unary <= 1.03, streaming
with previews <= 1.05).

The machine this was written on is shared and its load swings by several x within a minute, so
the paths are measured in interleaved rounds (every path once per round) and each row sums its
rounds: every path sees the same mix of quiet and busy moments. Both processes use the same
number of torch threads (--threads) and passive OpenMP waiting (see OMP_WAIT_POLICY below).

Prints a markdown table. Usage (from the repository root; a few minutes on 2 CPU cores):

    .venv/bin/python bench/t2i_bench.py
    .venv/bin/python bench/t2i_bench.py --size 256 --rounds 5 --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Two processes take turns on the same cores here (this one and the server). OpenMP's default
# spin-waiting keeps each one's idle threads busy for a while after its turn, which made the
# other's job 10-50x slower on 2 cores; passive waiting measures the work itself. Set before
# torch loads; the server subprocess inherits it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import grpc  # noqa: E402
import torch  # noqa: E402
from grpc_health.v1 import health_pb2  # noqa: E402

from mmserve.t2i.v1 import t2i_pb2, t2i_pb2_grpc  # noqa: E402
from services.t2i.servicer import SERVICE_NAME  # noqa: E402
from services.t2i.tiny import SD_CONFIG, tiny_model_dir  # noqa: E402
from tests.support.servers import start_process, wait_for_health  # noqa: E402

PROMPT = "a watercolor painting of a red fox in the snow"
SEED = 1234
GUIDANCE = 7.5


def bench_model_dir() -> Path:
    """The tiny SD pipeline with an 8x VAE (four blocks), like real SD: 256 px -> 32x32
    latents, so the UNet, not the VAE, does most of the work, as in real checkpoints."""
    config = copy.deepcopy(SD_CONFIG)
    config["vae"].update(
        block_out_channels=[16, 16, 32, 32],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        norm_num_groups=16,
        sample_size=256,
    )
    return tiny_model_dir("stable_diffusion", config)


def in_process_runner(folder: Path, size: int, steps: int) -> Callable[[], float]:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)

    def run() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            pipe(
                PROMPT,
                height=size,
                width=size,
                num_inference_steps=steps,
                guidance_scale=GUIDANCE,
                generator=[torch.Generator("cpu").manual_seed(SEED)],
            )
        return time.perf_counter() - started

    # On a dedicated thread, as the server's executor runs its jobs.
    device = ThreadPoolExecutor(1, thread_name_prefix="device")

    def on_device() -> float:
        return device.submit(run).result()

    on_device()  # warm-up, as the server warms up before SERVING
    return on_device


def request(size: int, steps: int, every: int = 0) -> t2i_pb2.TextToImageRequest:
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


async def served_unary(stub: Any, size: int, steps: int) -> float:
    started = time.perf_counter()
    reply = await stub.TextToImage(request(size, steps), timeout=600)
    assert reply.result.images[0].data.startswith(b"\x89PNG")
    return time.perf_counter() - started


async def served_stream(stub: Any, size: int, steps: int, every: int) -> float:
    started = time.perf_counter()
    previews = 0
    async for event in stub.StreamTextToImage(request(size, steps, every), timeout=600):
        previews += event.step.HasField("preview")
        if event.HasField("result"):
            assert event.result.images[0].data.startswith(b"\x89PNG")
    if every:
        assert previews == steps // every, previews
    return time.perf_counter() - started


async def main(args: argparse.Namespace) -> None:
    folder = bench_model_dir()
    torch.set_num_threads(args.threads)
    local = in_process_runner(folder, args.size, args.steps)
    with tempfile.TemporaryDirectory() as scratch:
        server = start_process(
            "services.t2i",
            [
                "--model", str(folder),
                "--torch-threads", str(args.threads),
                "--max-size", str(max(args.size, 1024)),
                "--warmup-steps", "2",
                "--eta-base-seconds", "1",
            ],
            Path(scratch) / "t2i.log",
        )  # fmt: skip
        try:
            async with grpc.aio.insecure_channel(server.target) as channel:
                await wait_for_health(
                    channel, health_pb2.HealthCheckResponse.SERVING, SERVICE_NAME, timeout=300
                )
                stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
                await served_unary(stub, args.size, args.steps)  # a first call opens the channel
                rows = await measure(stub, local, args)
        finally:
            server.stop()
    print_table(rows, args)


async def measure(
    stub: Any, local: Callable[[], float], args: argparse.Namespace
) -> dict[str, list[float]]:
    size, steps = args.size, args.steps

    async def in_process() -> float:
        return local()

    paths: dict[str, Callable[[], Awaitable[float]]] = {
        "in-process pipeline": in_process,
        "served TextToImage (unary)": lambda: served_unary(stub, size, steps),
        "served StreamTextToImage, steps only": lambda: served_stream(stub, size, steps, 0),
    }
    for every in args.preview_every:
        paths[f"served StreamTextToImage, preview every {every} step(s)"] = lambda every=every: (
            served_stream(stub, size, steps, every)
        )
    times: dict[str, list[float]] = {name: [] for name in paths}
    for round_index in range(args.rounds):
        for name, run in paths.items():
            times[name].append(await run())
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    return times


def print_table(times: dict[str, list[float]], args: argparse.Namespace) -> None:
    base = sum(times["in-process pipeline"])
    base_min = min(times["in-process pipeline"])
    print(
        f"\n{args.steps}-step job, {args.size}x{args.size}, guidance {GUIDANCE}, "
        f"{args.rounds} interleaved rounds, {args.threads} torch thread(s)\n"
    )
    print("| path | total s | mean s/job | min s/job | ratio (totals) | ratio (minimums) |")
    print("|---|---|---|---|---|---|")
    for name, values in times.items():
        total = sum(values)
        print(
            f"| {name} | {total:.2f} | {total / len(values):.3f} | {min(values):.3f} "
            f"| {total / base:.3f} | {min(values) / base_min:.3f} |"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="width and height in pixels")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per job")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument(
        "--preview-every", type=int, nargs="*", default=[1, 5], help="preview intervals to time"
    )
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
