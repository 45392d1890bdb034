"""What every capability's benchmark shares: the plan (sizes, concurrencies, repeats, device
settings) made from the runner's options, the measurement loop (warm-up, then interleaved
rounds), closed-loop clients, and a capability served behind Envoy by the local stack's own
launcher (direct and edge targets on the same server process).

The plan is pure (unit-tested without a GPU): `make_plan(options)` decides the profile, the
flags the servers get and how the in-process baselines load their models.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.stats import Cell, Run, Sample

REPO = Path(__file__).resolve().parents[1]
CAPABILITIES = ("vision", "t2i", "vl", "omni", "edge", "clients")


def setup_environment(threads: int) -> None:
    """Before torch is imported: no hub, and the same thread count in this process and every
    server it starts (they inherit the environment). Nothing else: the in-process baselines
    run the model card's recipe with the libraries' defaults (OpenMP's own wait policy
    included), and each server applies its own tuning from its settings (`openmp_wait_policy`,
    `gil_switch_interval_ms`), which is the server's advantage to earn, not the baseline's
    handicap. The cells of a round run one at a time, so an idle process costs the others
    nothing but OpenMP's short spin after its last job."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


BASELINE_ENVIRONMENT = (
    "in-process baselines: the model card's recipe on the bench's main thread, library defaults "
    "(no OMP_WAIT_POLICY or server tuning), same torch thread count as the servers; servers: "
    "their own settings; cells run one at a time in interleaved rounds"
)


# --- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The runner's command line, parsed."""

    capabilities: tuple[str, ...] = CAPABILITIES
    quick: bool = False
    device: str = "cpu"  # cpu | cuda
    dtype: str = "auto"  # auto | fp32 | bf16 | fp16
    compile: bool = False
    repeats: int | None = None  # default per profile
    threads: int = 0  # torch threads per process (0: the number of CPU cores, at most 16)
    litserve: bool = True
    envoy: bool = True
    batching: bool | None = None  # vl's batching option; default: on (the server's default)
    # "full" (every cell of the profile) or "gpu" (bench.gpu_plan: the GPU goals' cells only,
    # sized for a short GPU window; with quick, the same cells on the tiny models).
    plan: str = "full"


@dataclass(frozen=True)
class Plan:
    """Everything a capability benchmark needs to know, resolved from Options."""

    profile: str  # tiny | cpu | gpu (bench.models)
    device: str
    dtype: str  # the resolved name: float32 | bfloat16 | float16
    compile: bool
    repeats: int
    threads: int
    litserve: bool
    envoy: bool
    vl_batching: bool
    concurrency: dict[str, tuple[int, ...]] = field(default_factory=dict)
    sizes: dict[str, Any] = field(default_factory=dict)
    # Where the through-Envoy path is measured too (all levels but on CPU, where a t2i job or a
    # vl request takes seconds and Envoy's fraction of a millisecond is measured by edge).
    envoy_concurrency: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # Where the in-process baseline is measured (all levels but on CPU, where t2i and vl run
    # their jobs one after the other in-process anyway: the ratios at N clients then use the
    # 1-client baseline, see bench.stats.ratio_rows).
    in_process_concurrency: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # Capabilities measured in more rounds than `repeats` (runs of seconds, whose ratios need
    # more rounds on a shared machine); --repeats overrides every capability.
    rounds: dict[str, int] = field(default_factory=dict)
    plan: str = "full"  # full | gpu (Options.plan)

    def repeats_for(self, capability: str) -> int:
        return self.rounds.get(capability, self.repeats)

    def in_process_at(self, capability: str, concurrency: int) -> bool:
        return concurrency in self.in_process_concurrency.get(capability, ())

    def paths_at(self, capability: str, concurrency: int, targets: dict[str, Any]) -> dict:
        """The served paths (of `targets`: path -> client) to measure at `concurrency`."""
        from bench.stats import ENVOY

        envoy = concurrency in self.envoy_concurrency.get(capability, ())
        return {p: t for p, t in targets.items() if p != ENVOY or envoy}

    def server_flags(self, capability: str) -> list[str]:
        """Device flags every capability server gets (the in-process baseline uses the same);
        none for the model-less ones (edge, clients)."""
        if capability in ("edge", "clients"):
            return []
        flags = ["--device", self.device, "--dtype", self.dtype]
        if self.compile:
            flags.append("--compile")
        if capability in ("vision", "t2i") and self.device == "cpu":
            flags += ["--torch-threads", str(self.threads)]
        if capability == "vision" and self.plan == "gpu":
            # One forward pass for every waiting client, as the in-process baseline's batch.
            flags += ["--max-batch-size", str(max(self.concurrency.get("vision", (1,))))]
        if capability == "vl" and self.vl_batching:
            top = max(self.concurrency.get("vl", (1,)))
            flags += ["--batching", "--batch-max-size", str(max(2, top))]
        elif capability == "vl":
            flags.append("--no-batching")
        return flags


def default_threads() -> int:
    return max(1, min(16, os.cpu_count() or 1))


def make_plan(options: Options) -> Plan:
    if options.device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, not {options.device!r}")
    gpu = options.device == "cuda"
    if options.plan not in ("full", "gpu"):
        raise ValueError(f"--plan must be full or gpu, not {options.plan!r}")
    profile = "tiny" if options.quick else ("gpu" if gpu else "cpu")
    dtype = {
        "auto": "bfloat16" if gpu else "float32",
        "fp32": "float32",
        "float32": "float32",
        "bf16": "bfloat16",
        "bfloat16": "bfloat16",
        "fp16": "float16",
        "float16": "float16",
    }.get(options.dtype)
    if dtype is None:
        raise ValueError(f"--dtype must be auto, fp32, bf16 or fp16, not {options.dtype!r}")
    if options.quick:
        concurrency = {"vision": (1, 4), "t2i": (1,), "vl": (1, 2), "omni": (1,), "edge": (1,)}
        sizes = {
            "vision_images": {1: 8, 4: 16},
            "vision_image_size": (160, 120),
            "t2i_steps": 4,
            "t2i_size": 128,
            "vl_tokens": 8,
            "omni_tokens": 8,
            "edge_calls": 50,
        }
        repeats = 2
    elif gpu:
        concurrency = {
            "vision": (1, 4, 16, 64),
            "t2i": (1, 4),
            "vl": (1, 4, 16),
            "omni": (1,),
            "edge": (1, 16),
        }
        sizes = {
            "vision_images": {1: 32, 4: 64, 16: 256, 64: 512},
            "vision_image_size": (640, 480),
            "t2i_steps": 20,
            "t2i_size": 512,
            "vl_tokens": 64,
            "omni_tokens": 48,
            "edge_calls": 1000,
        }
        repeats = 5
    else:
        concurrency = {
            "vision": (1, 4, 16),
            "t2i": (1, 2),
            "vl": (1, 2),
            "omni": (1,),
            "edge": (1, 8),
        }
        sizes = {
            # One client: 64 images (about 5 s a cell). 24 (2 s) let one cell of a round move
            # by 10%, more than the 5% the 1-client goal allows serving.
            "vision_images": {1: 64, 4: 32, 16: 128},
            "vision_image_size": (640, 480),
            "t2i_steps": 8,
            "t2i_size": 256,
            "vl_tokens": 8,
            "omni_tokens": 24,
            "edge_calls": 300,
        }
        repeats = 3
    # edge: runs of a fraction of a second, whose differences of p50s (a few tenths of a
    # millisecond) move with the machine's load from one round to the next.
    rounds = {"vision": 5, "vl": 5, "edge": 7} if profile == "cpu" and not options.repeats else {}
    envoy_concurrency = dict(concurrency)
    in_process_concurrency = dict(concurrency)
    if profile == "cpu":
        envoy_concurrency.update(t2i=(1,), vl=(1,))
        in_process_concurrency.update(t2i=(1,), vl=(1,))
    if options.plan == "gpu":
        from bench import gpu_plan

        smoke = options.quick
        profile = "tiny" if smoke else "gpu"
        concurrency = dict(gpu_plan.SMOKE_CONCURRENCY if smoke else gpu_plan.GPU_CONCURRENCY)
        sizes = dict(gpu_plan.SMOKE_SIZES if smoke else gpu_plan.GPU_SIZES)
        repeats = gpu_plan.SMOKE_REPEATS if smoke else gpu_plan.GPU_REPEATS
        rounds, envoy_concurrency, in_process_concurrency = {}, {}, dict(concurrency)
    return Plan(
        profile=profile,
        device=options.device,
        dtype=dtype,
        compile=options.compile,
        repeats=options.repeats or repeats,
        threads=options.threads or default_threads(),
        litserve=options.litserve and options.plan != "gpu",
        envoy=options.envoy and options.plan != "gpu",
        vl_batching=True if options.batching is None else options.batching,
        concurrency=concurrency,
        sizes=sizes,
        envoy_concurrency=envoy_concurrency,
        in_process_concurrency=in_process_concurrency,
        rounds=rounds,
        plan=options.plan,
    )


# --- the machine --------------------------------------------------------------------------------


def machine_kind(device: str) -> str:
    """What RESULTS.md files a run under: "2 CPU cores, no GPU" or the GPU's name."""
    cores = os.cpu_count() or 0
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            return f"{name} x{torch.cuda.device_count()}, {cores} CPU cores"
    return f"{cores} CPU cores, no GPU"


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def machine_facts() -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    for package in ("transformers", "diffusers", "grpc", "litserve"):
        with contextlib.suppress(ImportError):
            facts[package] = __import__(package).__version__
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class CellSpec:
    """One cell and how to measure it once. `warm` runs before the rounds (default: `measure`
    itself, discarded); pass a no-op when another cell already warmed the same path."""

    cell: Cell
    measure: Callable[[], Run]
    warm: Callable[[], object] | None = None


def measure_rounds(
    specs: Sequence[CellSpec], repeats: int, log: Callable[[str], None] = print
) -> list[Cell]:
    """Warm-up, then `repeats` rounds in which every cell runs once, in order: each cell's runs
    see the same mix of quiet and busy moments of a shared machine as the others'."""
    for spec in specs:
        (spec.warm or spec.measure)()
    log(f"  warm; {len(specs)} cells x {repeats} rounds")
    for number in range(repeats):
        started = time.perf_counter()
        for spec in specs:
            spec.cell.runs.append(spec.measure())
        log(
            f"  round {number + 1}/{repeats} in {time.perf_counter() - started:.1f}s, "
            f"load {load_average()[0]:.2f}"
        )
    return [spec.cell.finish() for spec in specs]


class Loop:
    """One event loop for every asyncio client of a benchmark (grpc.aio channels belong to the
    loop that made them)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, awaitable: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(awaitable)

    def channel(self, target: str) -> Any:
        """A grpc.aio channel to `target`, made inside this loop (no message size limit)."""
        import grpc

        async def make() -> Any:
            return grpc.aio.insecure_channel(
                target, options=[("grpc.max_receive_message_length", -1)]
            )

        return self.run(make())

    def close(self) -> None:
        self.loop.close()


async def closed_loop(
    call: Callable[[int], Awaitable[tuple[Sample, float]]], requests: int, clients: int
) -> Run:
    """`clients` concurrent callers take request indexes 0..requests-1 in order, each calling
    `call(index)` (which returns its sample and the units it did) as soon as its previous call
    returned. Throughput = units / wall time of the whole run."""
    next_index = iter(range(requests))
    samples: list[Sample] = []
    units = 0.0

    async def client() -> None:
        nonlocal units
        for index in next_index:  # one shared iterator: each index is taken once
            sample, done = await call(index)
            samples.append(sample)
            units += done

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(max(1, min(clients, requests)))))
    return Run(time.perf_counter() - started, units, samples)


def timed_sequence(call: Callable[[int], tuple[Sample, float]], requests: int) -> Run:
    """The in-process counterpart of closed_loop: the requests one after the other."""
    samples: list[Sample] = []
    units = 0.0
    started = time.perf_counter()
    for index in range(requests):
        sample, done = call(index)
        samples.append(sample)
        units += done
    return Run(time.perf_counter() - started, units, samples)


# --- serving ------------------------------------------------------------------------------------


@dataclass
class Served:
    """One capability server started by the local stack's launcher, with Envoy in front of it:
    `direct` is the server's own port, `envoy` the edge (None when started without Envoy)."""

    direct: str
    envoy: str | None
    log_dir: Path
    _stop: Callable[[], None]
    pid: int | None = None

    def targets(self) -> dict[str, str]:
        from bench.stats import ENVOY, SERVED

        found = {SERVED: self.direct}
        if self.envoy is not None:
            found[ENVOY] = self.envoy
        return found

    def stop(self) -> None:
        self._stop()


def start_served(
    capability: str,
    args: Sequence[str],
    *,
    envoy: bool = True,
    module: str = "",
    ready_timeout: float = 900,
    log_dir: Path | None = None,
) -> Served:
    """Starts `python -m services.<capability>` (or `module`) with `args` as the local stack
    does (gateway.stack: the edge service and Envoy 1.40 with one worker in front), and waits
    until it is SERVING through Envoy. Without envoy, the server alone."""
    from gateway.catalog import capability as spec_of
    from gateway.render import EdgeConfig
    from gateway.stack import ServiceGroup, Stack, StackConfig

    log_dir = log_dir or Path(tempfile.mkdtemp(prefix=f"bench-{capability}-"))
    spec = spec_of("t2i" if capability == "edge" else capability)
    group = ServiceGroup(spec, module=module, args=tuple(args))
    if envoy:
        config = StackConfig(
            groups=[group],
            port=0,
            admin_port=0,
            run_dir=log_dir,
            ready_timeout=ready_timeout,
            stop_grace=30,
            edge=EdgeConfig(upstreams=(), edge_endpoints=(), descriptor_path=""),
        )
        stack = Stack(config)
        stack.start()
        try:
            stack.wait_ready()
        except BaseException:
            stack.stop()
            raise
        child = group.children[0]
        return Served(str(group.endpoints[0]), stack.address, log_dir, stack.stop, child.pid)
    from tests.support.servers import start_process

    server = start_process(module or spec.module, list(args), log_dir / f"{capability}.log")
    served = Served(server.target, None, log_dir, server.stop, server.process.pid)
    try:
        wait_serving(served.direct, spec.service, ready_timeout)
    except BaseException:
        server.stop()
        raise
    return served


def wait_serving(target: str, service: str, timeout: float) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.1)
    raise TimeoutError(f"{service} not SERVING at {target} within {timeout:.0f}s")
