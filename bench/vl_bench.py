"""vl benchmark: time to first token, decode tokens/s and tokens/s under concurrency, served vs
in-process.

The same request (one 224x224 image and one sentence, greedy, a fixed number of new tokens) to
the same Qwen2.5-VL-like model (bench.models: the tiny test model with --quick, a 0.5B-class
model on CPU, a 3B-class one on GPU):
- in-process: the model folder loaded with plain transformers (chat template, processor,
  `model.generate`, timed from before the processor call; a StoppingCriteria stamps tokens), in
  a child process shaped like the server (loaded on one thread, generating on a dedicated
  "device" thread): generating in the benchmark's own process was 5-10x slower on the 2-core
  machine this was written on (bench/results/vl.md), which would flatter the server;
  N requests one after the other at concurrency N;
- served: `python -m services.vl`, StreamChat from N concurrent clients, straight to its port and
  through Envoy, timed at the client from sending the request (PNG bytes) to each text delta.
  The server runs with its batching option as by default (on: requests decode together),
  `python -m bench.run --no-batching` runs it single-flight.

Part of the runner: `python -m bench.run --capabilities vl` (this file run as a script is the
same); `--in-process-child` is the internal entry point of the in-process process.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import from the repository, not from bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # bench/profile.py shadows stdlib's

from bench import kit

PROMPT = "Describe this picture in detail."
IMAGE_SIDE = 224
PROBE_REQUESTS = 12  # per run of each TTFT probe cell
PROBE_TOKENS = 4


def chat_request(tokens: int) -> Any:
    from tests.vl.helpers import USER, image, message, picture, request, text

    return request(
        message(USER, image(picture(IMAGE_SIDE, IMAGE_SIDE, seed=1)), text(PROMPT)),
        max_new_tokens=tokens,
        temperature=0.0,
    )


# --- in-process (a child process) ---------------------------------------------------------------


def _stamps() -> Any:
    import torch
    from transformers import StoppingCriteria

    class Stamps(StoppingCriteria):
        """Records when each token is generated; never stops anything."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            self.times.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return Stamps()


def generate_once(reference: Any, chat: Any, tokens: int, device: str, dtype: Any) -> dict:
    import torch
    from transformers import StoppingCriteriaList

    stamps = _stamps()
    started = time.perf_counter()
    inputs = reference.inputs(chat).to(device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    with torch.inference_mode():
        reference.model.generate(
            **inputs,
            max_new_tokens=tokens,
            do_sample=False,
            stopping_criteria=StoppingCriteriaList([stamps]),
        )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    ended = time.perf_counter()
    count = len(stamps.times)
    decode = stamps.times[-1] - stamps.times[0]
    return {
        "latency_s": ended - started,
        "ttft_ms": (stamps.times[0] - started) * 1000,
        "decode_tps": (count - 1) / decode if count > 1 and decode > 0 else float("nan"),
        "tokens": count,
    }


def child_main(folder: str, tokens: int, device: str, dtype_name: str, compile: bool) -> None:
    asyncio.run(_child(Path(folder), tokens, device, dtype_name, compile))


async def _child(folder: Path, tokens: int, device: str, dtype_name: str, compile: bool) -> None:
    # The server's shape: load and warm up via asyncio.to_thread (ServiceServer._load), then
    # generate on a dedicated one-thread executor (the executor's device thread).
    from services.runtime.devices import maybe_compile
    from tests.vl.helpers import Reference

    chat = chat_request(tokens)
    dtype = kit.torch_dtype(dtype_name)
    loop = asyncio.get_running_loop()

    def load() -> Any:
        reference = Reference.load(folder, "qwen2_5_vl")
        reference.model.to(device, dtype)
        maybe_compile(reference.model, compile)
        generate_once(reference, chat, tokens, device, dtype)  # warm-up
        return reference

    reference = await asyncio.to_thread(load)
    print(json.dumps({"ready": True}), flush=True)
    with ThreadPoolExecutor(1, thread_name_prefix="device") as pool:
        while (line := await loop.run_in_executor(None, sys.stdin.readline)) != "":
            if line.strip() == "run":
                result = await loop.run_in_executor(
                    pool, generate_once, reference, chat, tokens, device, dtype
                )
                print(json.dumps(result), flush=True)


class InProcess:
    """Talks to the child: one line "run" per request, one JSON line back."""

    def __init__(self, folder: Path, plan: kit.Plan, log: Path, tokens: int | None = None) -> None:
        tokens = tokens or plan.sizes["vl_tokens"]
        command = [
            sys.executable, "-m", "bench.vl_bench", "--in-process-child", str(folder),
            str(tokens), plan.device, plan.dtype, str(int(plan.compile)),
        ]  # fmt: skip
        self.log = log
        with log.open("wb") as errors:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                cwd=kit.REPO,
            )
        self._read()  # "ready" once loaded and warmed up

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"in-process child exited:\n{self.log.read_text()[-3000:]}")
            if line.startswith("{"):
                return dict(json.loads(line))

    def one(self, _index: int) -> tuple[kit.Sample, float]:
        assert self.process.stdin is not None
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        result = self._read()
        extra = {"ttft_ms": result["ttft_ms"], "decode_tps": result["decode_tps"]}
        return kit.Sample(result["latency_s"], batch=1, extra=extra), float(result["tokens"])

    def measure(self, requests: int) -> kit.Run:
        return kit.timed_sequence(self.one, requests)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


# --- served -------------------------------------------------------------------------------------


class GrpcClient(kit.ChannelClient):
    def __init__(self, target: str, loop: kit.Loop, tokens: int) -> None:
        from tests.vl.helpers import stub

        super().__init__(target, loop)
        self.stub = stub(self.channel)
        self.request = chat_request(tokens)

    async def one(self, _index: int) -> tuple[kit.Sample, float]:
        started = time.perf_counter()
        first = last = 0.0
        first_count = count = 0
        usage = None
        async for event in self.stub.StreamChat(self.request, timeout=3600):
            if event.HasField("delta"):
                now = time.perf_counter()
                if not first:
                    first, first_count = now, event.delta.output_tokens
                last = now
                count = event.delta.output_tokens
            elif event.HasField("completed"):
                usage = event.completed.usage
                count = usage.output_tokens
        ended = time.perf_counter()
        assert usage is not None
        assert first, "no text delta"
        decode = (count - first_count) / (last - first) if last > first else float("nan")
        extra = {"ttft_ms": (first - started) * 1000, "decode_tps": decode}
        sample = kit.Sample(ended - started, usage.queue_seconds, usage.batch_size, extra)
        return sample, float(count)

    def measure(self, requests: int, clients: int) -> kit.Run:
        return self.run_closed_loop(self.one, requests, clients)


def benchmark(
    plan: kit.Plan, log: Callable[[str], None] = print
) -> tuple[list[kit.Cell], list[str]]:
    from bench.models import vl_model_dir

    tokens = plan.sizes["vl_tokens"]
    log("vl: building/locating the model")
    folder = vl_model_dir(plan.profile)
    levels = plan.concurrency["vl"]
    notes = [
        f"vl: one {IMAGE_SIDE}x{IMAGE_SIDE} image + one sentence, greedy, {tokens} new tokens; "
        "throughput counts generated tokens (prefill included in the wall time); decode tok/s "
        "is measured after the first token"
        + ("; server with --batching (the default)" if plan.vl_batching else "; --no-batching")
    ]
    with kit.teardown() as (loop, closers):
        log("vl: starting the server and the in-process child")
        args = ["--model", str(folder), *plan.server_flags("vl")]
        server = kit.start_served("vl", args, envoy=plan.envoy)
        closers.append(server.stop)
        local = InProcess(folder, plan, server.log_dir / "in-process.log")
        closers.append(local.close)
        clients = {p: GrpcClient(t, loop, tokens) for p, t in server.targets().items()}
        closers += [c.close for c in clients.values()]
        specs: list[kit.CellSpec] = []
        for n in levels:
            first = n == levels[0]
            noop = None if first else (lambda: None)
            if plan.in_process_at("vl", n):
                specs.append(
                    kit.CellSpec(
                        kit.Cell("vl", kit.IN_PROCESS, n, "tok"),
                        lambda n=n: local.measure(n),
                        (lambda: local.measure(1)) if first else noop,
                    )
                )
            for path, client in plan.paths_at("vl", n, clients).items():
                specs.append(
                    kit.CellSpec(
                        kit.Cell("vl", path, n, "tok", "StreamChat"),
                        lambda n=n, client=client: client.measure(n, n),
                        (lambda client=client: client.measure(1, 1)) if first else noop,
                    )
                )
        order = {kit.IN_PROCESS: 0, kit.SERVED: 1, kit.ENVOY: 2}
        specs.sort(key=lambda s: (s.cell.concurrency, order[s.cell.path]))
        log("vl: starting the TTFT probe (tiny model: server and in-process child)")
        specs += _ttft_probe(plan, loop, closers)
        notes.append(
            f"vl: {kit.TTFT_PROBE}: the same request on the tiny Qwen2.5-VL (prefill in "
            f"milliseconds), {PROBE_REQUESTS} requests of {PROBE_TOKENS} tokens per run, one "
            "client, served straight to the port: what serving adds to time to first token, "
            "which the CPU-size model's TTFT (+-100 ms from run to run) hides"
        )
        cells = kit.measure_rounds(specs, plan.repeats_for("vl"), log)
    return cells, notes


def _ttft_probe(
    plan: kit.Plan, loop: kit.Loop, closers: list[Callable[[], None]]
) -> list[kit.CellSpec]:
    """In-process and served cells on the tiny model at one client: the difference of their
    TTFT is serving's share (decode, hops to the pool and the device thread, the stream)."""
    from bench.models import vl_model_dir

    folder = vl_model_dir("tiny")
    args = ["--model", str(folder), *plan.server_flags("vl")]
    server = kit.start_served("vl", args, envoy=False)
    closers.append(server.stop)
    local = InProcess(folder, plan, server.log_dir / "in-process-probe.log", PROBE_TOKENS)
    closers.append(local.close)
    client = GrpcClient(server.targets()[kit.SERVED], loop, PROBE_TOKENS)
    closers.append(client.close)
    return [
        kit.CellSpec(
            kit.Cell("vl", kit.IN_PROCESS, 1, "tok", kit.TTFT_PROBE),
            lambda: local.measure(PROBE_REQUESTS),
        ),
        kit.CellSpec(
            kit.Cell("vl", kit.SERVED, 1, "tok", kit.TTFT_PROBE),
            lambda: client.measure(PROBE_REQUESTS, 1),
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--in-process-child"]:
        folder, tokens, device, dtype, compile = args[1:6]
        child_main(folder, int(tokens), device, dtype, compile == "1")
        return 0
    return kit.script_main("vl", args)


if __name__ == "__main__":
    sys.exit(main())
