"""CPU profile of the served path for the smallest model (`make profile`).

Starts `python -m services.vision` on the tiny CLIP (a forward pass of a few milliseconds, so the
serving costs are not drowned by the model), drives EmbedImages calls with one small JPEG each
from another process, and samples the server with py-spy (all threads, CPU only, without
pausing it) for a fixed time per load shape: 1 client (the latency path), then N clients (the
batching path). Writes, per shape, py-spy's raw collapsed stacks (readable by speedscope and
flamegraph.pl) and a markdown summary: where the server's CPU time goes by category, and the
top functions by self and inclusive time outside the model.

    python -m bench.profile                      # 20 s per shape, 16 clients, busy + gil
    python -m bench.profile --seconds 30 --clients 8 --modes native
"""

from __future__ import annotations

import argparse
import asyncio
import io
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository, not from bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # bench/profile.py shadows stdlib's

from bench.harness import REPO, setup_environment

OUT = REPO / "bench" / "results" / "profile"

# (category, substrings of a frame; the first category any frame of a stack matches, searched
# from the leaf up, names the sample). Order matters: the model before the tensor library it uses.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("model forward (transformers/torch modules)", ("transformers/models/", "torch/nn/")),
    ("image preprocessing (processor)", ("image_processing", "image_transforms", "image_utils")),
    ("image decode (PIL)", ("PIL/", "decode_image")),
    ("protobuf (de)serialization", ("google/protobuf", "_pb2")),
    ("logging / access log", ("logging/", "json/encoder")),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("executor (queue, batching, events)", ("runtime/executor.py",)),
    ("interceptor / call scope", ("runtime/interceptors.py", "runtime/calls.py")),
    ("servicer (vision)", ("services/vision/",)),
    ("grpc (aio server)", ("grpc/", "cygrpc", "grpc_")),
    ("asyncio event loop", ("asyncio/",)),
    ("thread pools", ("concurrent/futures", "threading.py")),
)
MODEL = CATEGORIES[0][0]


@dataclass
class Stack:
    frames: tuple[str, ...]  # root first
    count: int


def parse_raw(text: str) -> list[Stack]:
    """py-spy's raw format: `frame;frame;...;leaf COUNT` per line, root first."""
    stacks = []
    for line in text.splitlines():
        body, _, count = line.rpartition(" ")
        if body and count.isdigit():
            stacks.append(Stack(tuple(body.split(";")), int(count)))
    return stacks


def category(frames: Sequence[str]) -> str:
    for name, needles in CATEGORIES:
        if any(needle in frame for frame in frames for needle in needles):
            return name
    return "other"


def leaf_category(frames: Sequence[str]) -> str:
    """The category of the deepest frame that matches one (what the CPU was doing)."""
    for frame in reversed(frames):
        for name, needles in CATEGORIES:
            if any(needle in frame for needle in needles):
                return name
    return "other"


def summarize(stacks: Iterable[Stack]) -> dict[str, Counter[str]]:
    stacks = list(stacks)
    by_category: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack in stacks:
        # Model time is whatever runs under a model frame; the rest by the leafmost match.
        name = MODEL if category(stack.frames) == MODEL else leaf_category(stack.frames)
        by_category[name] += stack.count
        if name == MODEL:
            continue
        self_time[_short(stack.frames[-1])] += stack.count
        for frame in set(stack.frames):
            if "services/" in frame or "bench/" in frame:
                inclusive[_short(frame)] += stack.count
    return {"category": by_category, "self": self_time, "inclusive": inclusive}


def _short(frame: str) -> str:
    # "handle (services/runtime/interceptors.py)" stays; long site-packages paths are trimmed.
    return frame.replace("site-packages/", "").replace(".venv/lib/python3.11/", "")


RATE = 200  # samples per second and thread


def table(counter: Counter[str], total: int, calls: int, top: int, title: str) -> str:
    lines = [f"| {title} | samples | % of samples | CPU us per call |", "|---|---:|---:|---:|"]
    for name, count in counter.most_common(top):
        per_call = count / RATE / max(calls, 1) * 1e6
        lines.append(f"| `{name}` | {count} | {100 * count / total:.1f} | {per_call:.0f} |")
    return "\n".join(lines)


def report(name: str, stacks: list[Stack], calls: int, top: int = 15) -> str:
    total = sum(s.count for s in stacks) or 1
    parts = summarize(stacks)
    return "\n\n".join(
        [
            f"#### {name}: {total} samples ({total / RATE:.1f} thread-seconds)",
            table(parts["category"], total, calls, 20, "where the time went (category)"),
            table(parts["self"], total, calls, top, "top self time outside the model (leaf)"),
            table(parts["inclusive"], total, calls, top, "top inclusive time in mmserve code"),
        ]
    )


# --- driving the server -------------------------------------------------------------------------


def small_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 80, 40)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


async def drive(target: str, clients: int, seconds: float) -> int:
    """Closed-loop EmbedImages calls for `seconds`; returns how many were made."""
    import grpc

    from mmserve.common.v1 import media_pb2
    from mmserve.vision.v1 import vision_pb2, vision_pb2_grpc

    image = media_pb2.Image(data=small_jpeg(), format=media_pb2.IMAGE_FORMAT_JPEG)
    request = vision_pb2.EmbedImagesRequest(images=[image])
    done = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = vision_pb2_grpc.VisionServiceStub(channel)
        deadline = time.monotonic() + seconds

        async def client() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                await stub.EmbedImages(request, timeout=30)
                done += 1

        await asyncio.gather(*(client() for _ in range(clients)))
    return done


def py_spy() -> str:
    found = Path(sys.executable).parent / "py-spy"
    if found.exists():
        return str(found)
    on_path = shutil.which("py-spy")
    if on_path is None:
        raise SystemExit("py-spy is not installed: make bench-deps (requirements-bench.txt)")
    return on_path


def profile_shape(
    target: str, pid: int, clients: int, seconds: float, output: Path, native: bool, gil: bool
) -> tuple[int, float]:
    command = [
        py_spy(), "record", "--pid", str(pid), "--format", "raw", "--output", str(output),
        "--duration", str(int(seconds)), "--rate", str(RATE), "--nolineno",
    ]  # fmt: skip
    # Native frames need the process paused for each sample; Python frames do not.
    command.append("--native" if native else "--nonblocking")
    if gil:
        command.append("--gil")
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # py-spy attaches
    started = time.perf_counter()
    calls = asyncio.run(drive(target, clients, seconds - 1.5))
    elapsed = time.perf_counter() - started
    _, errors = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0 or not output.exists():
        raise RuntimeError(f"py-spy failed ({spy.returncode}): {errors}")
    return calls, elapsed


MODES = {
    "busy": "every thread that is not idle (GIL holders, threads waiting for the GIL, native "
    "code such as torch kernels that released it)",
    "gil": "only the thread holding the GIL at each sample (the Python work itself: torch "
    "kernels that release the GIL are not counted)",
    "native": "busy threads with C/C++ frames (pauses the server for each sample: slower)",
}

HEADER = """\
# CPU profile of the served path (tiny CLIP, EmbedImages, one 64x48 JPEG per call)

`make profile` (`python -m bench.profile`): `python -m services.vision` on the tiny CLIP, driven
by closed-loop grpc.aio clients in another process, sampled by py-spy at {rate} Hz per thread
without pausing it (raw collapsed stacks beside this file, readable by speedscope or
flamegraph.pl). "CPU us per call" = samples / {rate} Hz / calls made while sampling. Categories
are assigned from the leaf up (model time: anything under a transformers model or torch.nn
module). `Handle._run` self time is code without Python frames run by asyncio callbacks: grpc's
Cython server (per-call handlers, completion queue, message (de)serialization through upb) and
asyncio's C task stepping.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="sampling time per shape")
    parser.add_argument("--clients", type=int, default=16, help="clients of the second shape")
    parser.add_argument("--threads", type=int, default=1, help="server torch threads")
    parser.add_argument(
        "--modes",
        default="busy,gil",
        help="comma-separated: " + "; ".join(f"{k}: {v}" for k, v in MODES.items()),
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise SystemExit(f"--modes: choose from {', '.join(MODES)}")
    setup_environment(args.threads)

    from bench.harness import load_average, wait_serving
    from services.vision.builtin.clip import tiny_clip_dir
    from services.vision.capability import SERVICE
    from tests.support.servers import start_process

    folder = tiny_clip_dir()
    args.out.mkdir(parents=True, exist_ok=True)
    log = Path(tempfile.mkdtemp(prefix="bench-profile-")) / "vision.log"
    server = start_process(
        "services.vision", ["--model", str(folder), "--torch-threads", str(args.threads)], log
    )
    sections = [HEADER.format(rate=RATE)]
    try:
        wait_serving(server.target, SERVICE, 300)
        asyncio.run(drive(server.target, 4, 3.0))  # warm: connections, caches, ETA samples
        for mode in modes:
            sections.append(f"## Mode {mode}: {MODES[mode]}")
            for clients in (1, args.clients):
                name = f"vision-tiny-{mode}-{clients}-client{'s' if clients > 1 else ''}"
                raw = args.out / f"{name}.txt"
                load = load_average()[0]
                calls, elapsed = profile_shape(
                    server.target,
                    server.process.pid,
                    clients,
                    args.seconds,
                    raw,
                    native=mode == "native",
                    gil=mode == "gil",
                )
                heading = (
                    f"### {clients} client(s), mode {mode}: {calls} EmbedImages calls in "
                    f"{elapsed:.1f} s ({calls / elapsed:.0f}/s), load average {load:.2f}; raw "
                    f"stacks: [{raw.name}]({raw.name})"
                )
                print(heading, file=sys.stderr)
                sections.append(heading + "\n\n" + report(name, parse_raw(raw.read_text()), calls))
    finally:
        server.stop()
    summary = args.out / "vision-tiny.md"
    summary.write_text("\n\n".join(sections) + "\n")
    print(summary.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
