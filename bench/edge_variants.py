"""What each part of the edge's Envoy config costs a small unary call: the rendered config of
the local stack, and variants of it with one filter or setting taken out (or changed), each a
separate Envoy in front of the same sleepy replica; GetModelInfo p50 through each, minus the
direct call's, in interleaved paired rounds (each round calls every target once, alternating
the order, so a busy moment of a shared machine hits them alike).

    python -m bench.edge_variants                       # every variant, 9 rounds of 300 calls
    python -m bench.edge_variants --variants base,no-json,router-only --rounds 15

Profiling only: the variants without a feature are not configurations to run (the edge keeps
grpc-web, JSON, CORS, the access log and retries); they show where the time goes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import from the repository, not from bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # bench/profile.py shadows stdlib's

from bench import kit
from bench.edge_bench import INFO, GrpcClient
from gateway.processes import free_port

Config = dict[str, Any]


def _manager(config: Config) -> Config:
    listener = config["static_resources"]["listeners"][0]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def _without_filter(name: str) -> Callable[[Config], None]:
    def change(config: Config) -> None:
        manager = _manager(config)
        manager["http_filters"] = [f for f in manager["http_filters"] if f["name"] != name]
        for host in manager["route_config"]["virtual_hosts"]:
            host.get("typed_per_filter_config", {}).pop(name, None)
            for route in host["routes"]:
                route.get("typed_per_filter_config", {}).pop(name, None)

    return change


def _without_retries(config: Config) -> None:
    for host in _manager(config)["route_config"]["virtual_hosts"]:
        for route in host["routes"]:
            route.get("route", {}).pop("retry_policy", None)


def _without_access_log(config: Config) -> None:
    _manager(config).pop("access_log", None)


def _without_request_ids(config: Config) -> None:
    manager = _manager(config)
    manager["generate_request_id"] = False
    manager["always_set_request_id_in_response"] = False


def _without_timeouts(config: Config) -> None:
    manager = _manager(config)
    for key in ("stream_idle_timeout", "request_headers_timeout", "common_http_protocol_options"):
        manager.pop(key, None)
    for host in manager["route_config"]["virtual_hosts"]:
        for route in host["routes"]:
            route.get("route", {}).pop("idle_timeout", None)


def _without_health_checks(config: Config) -> None:
    for cluster in config["static_resources"]["clusters"]:
        cluster.pop("health_checks", None)
        cluster.pop("outlier_detection", None)


def _without_stats(config: Config) -> None:
    config["stats_config"] = {"stats_matcher": {"reject_all": True}}


def _router_only(config: Config) -> None:
    manager = _manager(config)
    manager["http_filters"] = [
        f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.router"
    ]
    for host in manager["route_config"]["virtual_hosts"]:
        host.pop("typed_per_filter_config", None)
        for route in host["routes"]:
            route.pop("typed_per_filter_config", None)


def _bare(config: Config) -> None:
    for change in (_router_only, _without_access_log, _without_request_ids, _without_retries):
        change(config)
    _without_timeouts(config)
    _without_health_checks(config)


VARIANTS: dict[str, Callable[[Config], None]] = {
    "base": lambda config: None,
    "no-access-log": _without_access_log,
    "no-json": _without_filter("envoy.filters.http.grpc_json_transcoder"),
    "no-cors": _without_filter("envoy.filters.http.cors"),
    "no-grpc-web": _without_filter("envoy.filters.http.grpc_web"),
    "no-stateful-session": _without_filter("envoy.filters.http.stateful_session"),
    "no-retries": _without_retries,
    "no-request-ids": _without_request_ids,
    "no-timeouts": _without_timeouts,
    "no-health-checks": _without_health_checks,
    "no-stats": _without_stats,
    "router-only": _router_only,
    "bare": _bare,
}
# The same config with more worker threads (`--concurrency`).
WORKERS = {"base-2-workers": 2}
# The same config with its admin polled as the edge service polls the stack's Envoy (host
# health from /clusters every 0.5 s, gateway/edge.py), from a separate process.
POLLED = {"base-admin-polled": 0.5}
_POLLER = """
import sys, time, urllib.request
url, every = sys.argv[1], float(sys.argv[2])
while True:
    try:
        urllib.request.urlopen(url, timeout=2).read()
    except OSError:
        pass
    time.sleep(every)
"""


def variant_config(base: Config, name: str, port: int, admin_port: int) -> Config:
    import copy

    config = copy.deepcopy(base)
    VARIANTS["base" if name in WORKERS or name in POLLED else name](config)
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = port
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    return config


def start_envoy(config: Config, folder: Path, name: str, workers: int) -> subprocess.Popen[bytes]:
    import yaml

    from gateway.processes import tool

    path = folder / f"envoy-{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = (folder / f"envoy-{name}.log").open("wb")
    command = [tool("envoy"), "-c", str(path), "--concurrency", str(workers)]
    command += ["--disable-hot-restart", "--log-level", "warn"]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def measure(names: Sequence[str], rounds: int, calls: int, log: Callable[[str], None]) -> str:
    import yaml

    server = kit.start_served(
        "edge", ["--step-seconds", "0"], module="tests.support.sleepy_service", envoy=True
    )
    loop = kit.Loop()
    envoys: list[subprocess.Popen[bytes]] = []
    folder = Path(tempfile.mkdtemp(prefix="edge-variants-"))
    try:
        assert server.envoy is not None
        base = yaml.safe_load((server.log_dir / "envoy.yaml").read_text())
        targets = {"direct": server.direct, "stack": server.envoy}
        for name in names:
            port, admin = free_port(), free_port()
            config = variant_config(base, name, port, admin)
            envoys.append(start_envoy(config, folder, name, WORKERS.get(name, 1)))
            targets[name] = f"127.0.0.1:{port}"
            if name in POLLED:
                url = f"http://127.0.0.1:{admin}/clusters?format=json"
                poller = [sys.executable, "-c", _POLLER, url, str(POLLED[name])]
                envoys.append(subprocess.Popen(poller))
        clients = {name: GrpcClient(target, loop) for name, target in targets.items()}
        _wait_ready(clients)
        p50: dict[str, list[float]] = {name: [] for name in clients}
        order = list(clients)
        loads = []
        for number in range(rounds):
            for name in order if number % 2 == 0 else order[::-1]:
                run = clients[name].measure(INFO, calls, 1)
                p50[name].append(statistics.median(s.latency_s for s in run.samples) * 1000)
            loads.append(os.getloadavg()[0])
            log(f"round {number + 1}/{rounds}, load {loads[-1]:.2f}")
        for client in clients.values():
            client.close()
        return _table(p50, rounds, calls, loads)
    finally:
        for envoy in envoys:
            envoy.terminate()
        for envoy in envoys:
            envoy.wait(10)
        server.stop()
        loop.close()


def _wait_ready(clients: dict[str, GrpcClient]) -> None:
    deadline = time.monotonic() + 60
    for client in clients.values():
        while True:
            try:
                client.measure(INFO, 50, 1)  # also the warm-up
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def _table(p50: dict[str, list[float]], rounds: int, calls: int, loads: list[float]) -> str:
    direct = p50["direct"]
    lines = [
        f"GetModelInfo, 1 client, {calls} calls per run, {rounds} paired rounds; load average "
        f"{min(loads):.1f}-{max(loads):.1f}",
        "",
        "| target | p50 ms (median of runs) | adds to direct, ms (median of paired rounds) |",
        "|---|---:|---:|",
    ]
    for name, values in p50.items():
        added = statistics.median(a - d for a, d in zip(values, direct, strict=True))
        lines.append(f"| {name} | {statistics.median(values):.3f} | {added:+.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.edge_variants", description=__doc__)
    parser.add_argument("--variants", default=",".join([*VARIANTS, *WORKERS, *POLLED]))
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    known = [*VARIANTS, *WORKERS, *POLLED]
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(known)}")
    print(measure(names, args.rounds, args.calls, lambda m: print(m, file=sys.stderr)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
