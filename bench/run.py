"""The benchmark runner: every capability served (direct and through Envoy) against the same
model in-process (and, for vision, LitServe), at several concurrencies, on one machine in one
run; a table of ratios, p50/p99 latencies, queue wait and batch sizes; each figure the median of
repeated runs after warm-up.

    python -m bench.run                               # everything, CPU sizes (make bench)
    python -m bench.run --quick --capabilities vision # tiny models, 2 runs: a smoke run
    python -m bench.run --device cuda --dtype bf16 --compile   # GPU sizes, batching, compile
    python -m bench.run --out bench/results --update-results  # files + RESULTS.md section
    python -m bench.run --report-only bench/results/2-cpu-cores-no-gpu.json  # re-render
    python -m bench.run --device cuda --compile --dry-run     # the GPU sizes, without a GPU
    python -m bench.run --plan gpu              # a short GPU window: the GPU goals (< 10 min)
    python -m bench.run --plan gpu --dry-run    # that plan with its time estimates, anywhere
    python -m bench.run --plan gpu --smoke      # that plan's cells on tiny models on CPU (CI)

Capabilities: vision, t2i, vl, omni, edge (no model: what Envoy adds), clients (the Python SDK
over the raw stubs). Each is a module bench/<capability>_bench.py.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import shlex
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import from the repository, not from bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # bench/profile.py shadows stdlib's

from bench.gpu_plan import BUDGET_SECONDS
from bench.harness import (
    CAPABILITIES,
    REPO,
    Options,
    Plan,
    default_threads,
    load_average,
    make_plan,
    setup_environment,
)
from bench.stats import (
    Cell,
    machine_slug,
    replace_section,
    results_from_json,
    results_to_json,
)

ALL = CAPABILITIES
MODULES = {
    "vision": "bench.vision_bench",
    "t2i": "bench.t2i_bench",
    "vl": "bench.vl_bench",
    "omni": "bench.omni_bench",
    "edge": "bench.edge_bench",
    "clients": "bench.clients_bench",
}
RESULTS_MD = REPO / "bench" / "RESULTS.md"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(__doc__ or "").split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--capabilities",
        default="",
        help=f"comma-separated, in this order by default: {','.join(ALL)} (--plan gpu: its own)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny models, fewer clients and runs (a smoke run)"
    )
    parser.add_argument(
        "--plan",
        default="full",
        choices=("full", "gpu"),
        help="full: every cell of the profile; gpu: the GPU goals' cells only (bench.gpu_plan)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="with --plan gpu: the same cells on the tiny models, on CPU (no GPU needed)",
    )
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=0,
        help="skip a capability whose estimate no longer fits (0: --plan gpu's 600 s, else none)",
    )
    parser.add_argument(
        "--device", default=None, choices=("cpu", "cuda"), help="cpu (default), cuda (--plan gpu)"
    )
    parser.add_argument(
        "--dtype", default="auto", help="auto (fp32 on CPU, bf16 on CUDA), fp32, bf16 or fp16"
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile (servers and in-process alike)"
    )
    parser.add_argument("--repeats", type=int, default=0, help="runs per figure (0: profile's)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help=f"torch threads in every process (0: the cores, here {default_threads()})",
    )
    parser.add_argument("--no-litserve", action="store_true", help="skip the LitServe peer")
    parser.add_argument("--no-envoy", action="store_true", help="skip the through-Envoy paths")
    parser.add_argument(
        "--batching",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="vl server's batching option (default: on, as the server's own default)",
    )
    parser.add_argument(
        "--json", help="write the machine-readable results here ('-' for stdout)", default=""
    )
    parser.add_argument(
        "--out",
        help="folder for <machine>.json, <machine>.md and plots/ (e.g. bench/results)",
        default="",
    )
    parser.add_argument(
        "--update-results",
        action="store_true",
        help="replace this machine kind's section of bench/RESULTS.md with this run's tables",
    )
    parser.add_argument(
        "--report-only", metavar="JSON", help="re-render the report and plots of a JSON result"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (sizes, clients, each server's flags) as JSON and exit",
    )
    return parser.parse_args(list(argv))


def options_from(args: argparse.Namespace) -> Options:
    from bench.gpu_plan import GPU_CAPABILITIES

    gpu_plan = args.plan == "gpu"
    if args.smoke and not gpu_plan:
        raise SystemExit("--smoke goes with --plan gpu")
    text = args.capabilities or ",".join(GPU_CAPABILITIES if gpu_plan else ALL)
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in ALL]
    if unknown:
        raise SystemExit(f"unknown capabilities {unknown}; choose from {', '.join(ALL)}")
    if gpu_plan and set(names) - set(GPU_CAPABILITIES):
        raise SystemExit(f"--plan gpu measures {', '.join(GPU_CAPABILITIES)} only")
    device = args.device or ("cuda" if gpu_plan and not args.smoke else "cpu")
    return Options(
        capabilities=names,
        quick=args.quick or args.smoke,
        plan=args.plan,
        device=device,
        dtype=args.dtype,
        compile=args.compile,
        repeats=args.repeats or None,
        threads=args.threads,
        litserve=not args.no_litserve,
        envoy=not args.no_envoy,
        batching=args.batching,
    )


class LoadSampler:
    """The 1-minute load average every few seconds while a capability runs."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self.samples: list[float] = [load_average()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(load_average()[0])

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=self.every + 1)
        self.samples.append(load_average()[0])
        return {"samples": [round(s, 2) for s in self.samples]}


def run_capabilities(
    plan: Plan,
    names: Sequence[str],
    log: Callable[[str], None],
    deadline: float | None = None,
    estimates: dict[str, float] | None = None,
) -> tuple[list[Cell], dict[str, Any], list[str]]:
    """Each capability in turn; one that fails is recorded (with its error) and the run goes on.
    With a deadline (time.monotonic() seconds), a capability whose estimate no longer fits is
    skipped and recorded as such: a short GPU window still yields the others' figures."""
    from bench.models import describe

    cells: list[Cell] = []
    info: dict[str, Any] = {}
    notes: list[str] = []
    for name in names:
        log(f"== {name}")
        needed = (estimates or {}).get(name, 0.0)
        if deadline is not None and time.monotonic() + needed > deadline:
            left = max(0.0, deadline - time.monotonic())
            status = f"skipped: about {needed:.0f} s needed, {left:.0f} s left before the deadline"
            info[name] = {"model": describe(plan.profile, name), "elapsed_s": 0.0,
                          "load": {"samples": []}, "status": status}  # fmt: skip
            log(f"   {name}: {status}")
            continue
        sampler = LoadSampler()
        started = time.perf_counter()
        status = "ok"
        try:
            module = importlib.import_module(MODULES[name])
            found, extra = module.benchmark(plan, log)
            cells += found
            notes += extra
        except Exception as exc:  # one broken capability must not cost the others' figures
            status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            log(traceback.format_exc())
        info[name] = {
            "model": describe(plan.profile, name),
            "elapsed_s": round(time.perf_counter() - started, 1),
            "load": sampler.stop(),
            "status": status,
        }
        log(f"   {name}: {status} in {info[name]['elapsed_s']:.0f}s")
    return cells, info, notes


def write_outputs(
    meta: dict[str, Any], cells: list[Cell], args: argparse.Namespace, log: Callable[[str], None]
) -> str:
    """JSON, markdown and plots where the options ask; returns the markdown."""
    from bench import report

    slug = machine_slug(meta["machine"]) + ("-quick" if meta["plan"]["profile"] == "tiny" else "")
    text = results_to_json(meta, cells)
    plots: list[str] = []
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{slug}.json").write_text(text)
        written = report.plot(cells, out / "plots", slug, meta["machine"])
        plots = [str(p.relative_to(out)) for p in written]
    document = report.markdown(meta, cells, plots)
    if args.out:
        (Path(args.out) / f"{slug}.md").write_text(
            f"# Benchmark run: {meta['machine']}\n\n{report.MEANINGS}\n" + document
        )
        log(f"wrote {args.out}/{slug}.json, {slug}.md and {len(plots)} plots")
    if args.json == "-":
        sys.stdout.write(text)
    elif args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    if args.update_results:
        base = Path(args.out) if args.out else None
        linked = [
            str((base / p).resolve().relative_to(RESULTS_MD.parent.resolve()))
            for p in plots
            if base is not None
        ]
        section = report.markdown(meta, cells, linked, heading="###")
        RESULTS_MD.write_text(replace_section(RESULTS_MD.read_text(), slug, section))
        log(f"updated the '{slug}' section of {RESULTS_MD.relative_to(REPO)}")
    return document


def plan_estimates(plan: Plan, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """The GPU plan's time estimates per capability and phase (none for the full plan)."""
    if plan.plan != "gpu":
        return {}
    from bench.gpu_plan import estimate

    chosen = {n: plan.concurrency[n] for n in names if n in plan.concurrency}
    return estimate(chosen, plan.sizes, plan.repeats)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # SIGTERM (timeout, CI) unwinds like Ctrl-C: every server and child is stopped on the way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.report_only:
        meta, cells = results_from_json(Path(args.report_only).read_text())
        for cell in cells:
            if not cell.figures:  # the stored figures stand: re-rendering changes nothing
                cell.finish()
        print(write_outputs(meta, cells, args, log))
        return 0

    options = options_from(args)
    plan = make_plan(options)
    estimates = plan_estimates(plan, options.capabilities)
    if args.dry_run:
        described = {
            **asdict(plan),
            "server_flags": {n: plan.server_flags(n) for n in options.capabilities},
        }
        if plan.plan == "gpu":
            from bench.gpu_plan import total_seconds

            described["estimates_s"] = estimates
            described["estimated_total_s"] = total_seconds(estimates)
            described["budget_s"] = BUDGET_SECONDS
        print(json.dumps(described, indent=1, default=str))
        return 0
    setup_environment(plan.threads)
    import torch  # after setup_environment: OpenMP reads its settings once

    torch.set_num_threads(plan.threads)
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to this torch build")
    from bench.harness import BASELINE_ENVIRONMENT, machine_facts, machine_kind

    started = time.time()
    meta: dict[str, Any] = {
        "machine": machine_kind(plan.device),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python -m bench.run " + shlex.join(sys.argv[1:] if argv is None else argv),
        "options": asdict(options),
        "plan": asdict(plan),
        "facts": machine_facts(),
        "environment": BASELINE_ENVIRONMENT,
    }
    more = "".join(f", {cap} {n}" for cap, n in plan.rounds.items())
    log(f"{meta['machine']}; plan {plan.profile}, {plan.repeats} runs per figure{more}")
    deadline = args.deadline_s or (BUDGET_SECONDS if plan.plan == "gpu" else 0)
    cells, meta["capabilities"], meta["notes"] = run_capabilities(
        plan,
        options.capabilities,
        log,
        deadline=time.monotonic() + deadline if deadline else None,
        estimates={n: sum(e.values()) for n, e in estimates.items()},
    )
    meta["elapsed_s"] = round(time.time() - started, 1)
    gpu_table = ""
    if plan.plan == "gpu":
        from bench.gpu_plan import VISION_TOP, evaluate_gpu_goals
        from bench.stats import goals_table

        top = max(plan.concurrency.get("vision", (VISION_TOP,)))
        goals = evaluate_gpu_goals(cells, top)
        meta["gpu_goals"] = [asdict(g) for g in goals]
        where = meta["machine"]
        if plan.profile == "tiny":
            where += "; smoke run: tiny models, so the figures test the plan, not the goals"
        gpu_table = f"\nGPU goals ({where}):\n\n{goals_table(goals)}\n"
    document = write_outputs(meta, cells, args, log) + gpu_table
    if args.json != "-":
        print(document)
    failed = [n for n, i in meta["capabilities"].items() if i["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
