"""The local stack: every capability that exists (on its built-in tiny model), the edge service,
Envoy and the browser playground at the edge's own URL, on one machine; waits until each
capability is SERVING through Envoy, prints the address and examples, and stops everything on
Ctrl-C or SIGTERM.

    python -m gateway.stack                        # every capability, one replica each
    python -m gateway.stack --replicas vision=2 --only vision,t2i --port 8080
"""

from __future__ import annotations

import argparse
import os
import signal
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.catalog import CAPABILITIES, CapabilitySpec, capability
from gateway.descriptors import build_descriptor_set
from gateway.processes import REPO, Child, free_port, stop_all, tool
from gateway.render import EdgeConfig, Endpoint, capability_upstream, render
from gateway.static import WEB_DIR, PlaygroundError, StaticServer, ensure_built

SERVING = health_pb2.HealthCheckResponse.SERVING
OPENAI_PENDING = "/v1/ (gateway.openai)"
OPENAI_PORT = 8090  # gateway.openai's own port with --fixed-ports


def available_capabilities() -> list[str]:
    """Capabilities whose service package exists in this checkout (runnable with -m)."""
    return [n for n in CAPABILITIES if (REPO / "services" / n / "__main__.py").is_file()]


@dataclass
class ServiceGroup:
    """The replicas of one capability."""

    spec: CapabilitySpec
    replicas: int = 1
    module: str = ""  # default: services.<name>
    args: tuple[str, ...] = ()  # extra flags for every replica
    ports: tuple[int, ...] = ()  # fixed gRPC ports; default: free ones
    metrics_ports: tuple[int, ...] = ()  # fixed /metrics ports; default: free ones
    children: list[Child] = field(default_factory=list)
    endpoints: list[Endpoint] = field(default_factory=list)


@dataclass
class StackConfig:
    groups: list[ServiceGroup]
    host: str = "127.0.0.1"  # the edge's listen address; services stay on loopback
    port: int = 8080  # the edge (0: a free port)
    admin_port: int = 9901  # Envoy admin on 127.0.0.1 (0: a free port)
    run_dir: Path = REPO / "build" / "stack"
    envoy_concurrency: int = 1
    ready_timeout: float = 600.0  # first start builds the tiny models
    stop_grace: float = 30.0
    env: Mapping[str, str] = field(default_factory=dict)  # extra environment for the services
    edge: EdgeConfig | None = None  # template for the rendered parameters (TLS, CORS, timeouts)
    # A built playground (clients/web/dist) to serve at the edge's own URL; None: no playground.
    playground: Path | None = None
    # The OpenAI-compatible HTTP service (python -m gateway.openai) under /v1/ on the edge.
    openai: bool = True
    openai_port: int = 0  # its own loopback port (0: a free one)
    # An OTLP/gRPC collector: Envoy and every replica send it their spans. "" keeps tracing off
    # (for the services, unless their own environment names a collector).
    otlp_endpoint: str = ""


class Stack:
    """Starts and stops the processes of a StackConfig. Start it from the main thread (children
    get SIGTERM when the thread that started them ends)."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.port = config.port or free_port()
        self.admin_port = config.admin_port or free_port()
        self.edge_port = free_port()
        self.edge_child: Child | None = None
        self.openai_child: Child | None = None
        self.openai_port = config.openai_port or free_port()
        self.envoy: Child | None = None
        self.static: StaticServer | None = None  # the playground's files, on loopback
        self.envoy_config_path = config.run_dir / "envoy.yaml"

    # --- addresses ---
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}" if self.config.host == "0.0.0.0" else self.target

    @property
    def target(self) -> str:
        return f"{self.config.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def url(self) -> str:
        """The edge as a browser reaches it (http or https)."""
        tls = bool(self.config.edge and self.config.edge.tls_cert)
        return f"{'https' if tls else 'http'}://{self.address}"

    @property
    def playground_url(self) -> str | None:
        """The playground's page: the edge's own URL (its grpc-web calls are same-origin)."""
        return f"{self.url}/" if self.config.playground is not None else None

    def group(self, name: str) -> ServiceGroup:
        return next(g for g in self.config.groups if g.spec.name == name)

    # --- start ---
    def _replica(self, group: ServiceGroup, index: int, port: int) -> Child:
        """The command of one replica: loopback only (clients come through Envoy)."""
        module = group.module or group.spec.module
        argv = [
            sys.executable,
            "-m",
            module,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-port",
            str(group.metrics_ports[index] if group.metrics_ports else 0),
            *group.args,
        ]
        log = self.config.run_dir / "logs" / f"{group.spec.name}-{index}.log"
        env = dict(self.config.env)
        if self.config.otlp_endpoint:
            env["MMSERVE_OTLP_ENDPOINT"] = self.config.otlp_endpoint
        return Child(f"{group.spec.name}[{index}]", argv, log, env)

    def start_replica(self, name: str, index: int) -> Child:
        """(Re)starts one replica on its port: the one Envoy already routes to."""
        group = self.group(name)
        child = self._replica(group, index, group.endpoints[index].port).start()
        group.children[index] = child
        return child

    def edge_config(self) -> EdgeConfig:
        base = self.config.edge or EdgeConfig(upstreams=(), edge_endpoints=(), descriptor_path="")
        upstreams = tuple(capability_upstream(g.spec.name, g.endpoints) for g in self.config.groups)
        descriptors = build_descriptor_set(self.config.run_dir / "mmserve.binpb")
        static = Endpoint("127.0.0.1", self.static.port) if self.static is not None else None
        return replace(
            base,
            upstreams=upstreams,
            edge_endpoints=(Endpoint("127.0.0.1", self.edge_port),),
            descriptor_path=str(descriptors),
            listen_host=self.config.host,
            listen_port=self.port,
            admin_port=self.admin_port,
            playground=static,
            openai=(Endpoint("127.0.0.1", self.openai_port),) if self.config.openai else (),
            otlp_endpoint=self.config.otlp_endpoint or base.otlp_endpoint,
        )

    def start(self) -> None:
        run_dir = self.config.run_dir
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        for group in self.config.groups:
            ports = list(group.ports) or [free_port() for _ in range(group.replicas)]
            group.endpoints = [Endpoint("127.0.0.1", p) for p in ports]
            group.children = [self._replica(group, i, p).start() for i, p in enumerate(ports)]
        names = ",".join(g.spec.name for g in self.config.groups)
        self.edge_child = Child(
            "edge",
            [
                sys.executable,
                "-m",
                "gateway.edge",
                "--port",
                str(self.edge_port),
                "--envoy-admin",
                self.admin_url,
                "--capabilities",
                names,
            ],
            run_dir / "logs" / "edge.log",
        ).start()
        if self.config.openai:
            self.openai_child = self._openai().start()
        if self.config.playground is not None:
            # A thread of this process: it ends with the launcher, like the children do.
            log = run_dir / "logs" / "playground.log"
            self.static = StaticServer(self.config.playground, log_path=log).start()
        self.envoy_config_path.write_text(render(self.edge_config()))
        self.envoy = Child(
            "envoy",
            [
                tool("envoy"),
                "-c",
                str(self.envoy_config_path),
                "--concurrency",
                str(self.config.envoy_concurrency),
                # Several Envoys may share a host (tests, other stacks): no shared memory.
                "--disable-hot-restart",
                "--log-level",
                "warn",
            ],
            run_dir / "logs" / "envoy.log",
        ).start()

    def _openai(self) -> Child:
        """The OpenAI-compatible service: a gRPC client of every replica of each capability
        (round-robin, skipping replicas that are not SERVING)."""
        upstreams = ";".join(
            f"{g.spec.name}=ipv4:{','.join(str(e) for e in g.endpoints)}"
            for g in self.config.groups
        )
        argv = [
            sys.executable,
            "-m",
            "gateway.openai",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.openai_port),
            "--upstream",
            upstreams,
        ]
        log = self.config.run_dir / "logs" / "openai.log"
        return Child("openai", argv, log)

    @property
    def openai_url(self) -> str | None:
        """The OpenAI-compatible API's base URL (for OpenAI(base_url=...)), through Envoy."""
        return f"{self.url}/v1" if self.config.openai else None

    def children(self) -> list[Child]:
        found = [c for g in self.config.groups for c in g.children]
        extra = (self.edge_child, self.openai_child, self.envoy)
        return [*found, *(c for c in extra if c is not None)]

    def openai_ready(self, timeout: float = 2.0) -> bool:
        """The OpenAI-compatible service answers through Envoy."""
        if not self.config.openai:
            return True
        context = ssl._create_unverified_context() if self.url.startswith("https") else None
        try:
            with urllib.request.urlopen(
                f"{self.url}/v1/healthz", timeout=timeout, context=context
            ) as reply:
                return bool(reply.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    # --- readiness ---
    def health(self, service: str = "", timeout: float = 2.0) -> int | None:
        """A service's health as the edge reports it through Envoy; None when unreachable."""
        with grpc.insecure_channel(self.address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=timeout
                )
            except grpc.RpcError:
                return None
            return int(reply.status)

    def wait_ready(self, timeout: float | None = None, stop: threading.Event | None = None) -> bool:
        """Until every capability is SERVING through Envoy (True), or `stop` is set (False);
        fails early if a process exits, and after `timeout`."""
        deadline = time.monotonic() + (timeout or self.config.ready_timeout)
        pending = [g.spec.service for g in self.config.groups]
        while pending:
            for child in self.children():
                if not child.running():
                    raise RuntimeError(
                        f"{child.name} exited ({child.process and child.process.returncode}); "
                        f"log {child.log_path}:\n{child.tail()}"
                    )
            pending = [s for s in pending if s == OPENAI_PENDING or self.health(s) != SERVING]
            if pending == [OPENAI_PENDING] or not pending:
                pending = [] if self.openai_ready() else [OPENAI_PENDING]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"not SERVING through Envoy in time: {', '.join(pending)}")
            if stop is not None and stop.wait(0.2):
                return False
            if stop is None:
                time.sleep(0.2)
        return True

    # --- stop ---
    def stop(self, grace: float | None = None) -> None:
        """Services and the edge service drain first (Envoy still carries their last replies),
        then Envoy goes."""
        grace = self.config.stop_grace if grace is None else grace
        services = [c for c in self.children() if c is not self.envoy]
        stop_all(services, grace)
        if self.envoy is not None:
            stop_all([self.envoy], 5.0)
        if self.static is not None:
            self.static.stop()
            self.static = None

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- command line ---
def _pairs(values: Sequence[str], what: str, split: bool = True) -> dict[str, str]:
    """NAME=VALUE items, also comma-separated when `split` (service flags may hold commas)."""
    pairs: dict[str, str] = {}
    for item in values:
        for part in item.split(",") if split else [item]:
            name, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"{what}: expected NAME=VALUE, got {part!r}")
            capability(name)
            pairs[name] = value
    return pairs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.stack",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--only", default="", help="Comma-separated capabilities to run (default: all present)."
    )
    parser.add_argument(
        "--replicas", action="append", default=[], help="Replicas per capability, NAME=N."
    )
    parser.add_argument(
        "--module",
        action="append",
        default=[],
        help="Run a capability from another module, NAME=python.module (tests, experiments).",
    )
    parser.add_argument(
        "--service-args",
        action="append",
        default=[],
        help="Extra flags for one capability, NAME='--flag value ...'.",
    )
    parser.add_argument(
        "--fixed-ports",
        action="store_true",
        help="Replica i of a capability on its default ports + 100*i (t2i 50051/9091, vl "
        "50052/9092, vision 50053/9093, omni 50054/9094), gateway.openai on 8090, instead of "
        "free ones.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="Edge listen address.")
    parser.add_argument("--port", type=int, default=8080, help="Edge port; 0 picks a free one.")
    parser.add_argument("--admin-port", type=int, default=9901, help="Envoy admin (loopback).")
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=None,
        help="Allowed browser origin, repeatable ('*' for any); default localhost:3000.",
    )
    parser.add_argument(
        "--playground",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Serve the browser playground (clients/web) at the edge's URL, building it first "
        "(npm run build) when it is missing or older than its sources.",
    )
    parser.add_argument(
        "--openai",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Serve the OpenAI-compatible HTTP API (python -m gateway.openai) under /v1/ on "
        "the edge's port.",
    )
    parser.add_argument(
        "--otlp-endpoint",
        default=os.environ.get("MMSERVE_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
        help="OpenTelemetry collector (OTLP/gRPC, http://host:4317): Envoy and every service "
        "send it one trace per call. Default: env MMSERVE_OTLP_ENDPOINT, "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT; empty: off.",
    )
    parser.add_argument(
        "--trace-sample-percent",
        type=float,
        default=100.0,
        help="With --otlp-endpoint: the calls Envoy traces, in percent (the services follow "
        "its decision).",
    )
    parser.add_argument("--tls-cert", default="", help="PEM certificate: serve HTTPS/h2.")
    parser.add_argument("--tls-key", default="", help="PEM private key for --tls-cert.")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=REPO / "build" / "stack",
        help="Rendered envoy.yaml, descriptor set and logs/.",
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=600.0, help="Seconds to wait for SERVING."
    )
    parser.add_argument("--stop-grace", type=float, default=30.0, help="SIGTERM -> SIGKILL.")
    return parser


def config_from_args(args: argparse.Namespace) -> StackConfig:
    present = available_capabilities()
    only = [capability(n).name for n in args.only.split(",") if n]
    modules = _pairs(args.module, "--module")
    names = only or [n for n in CAPABILITIES if n in present or n in modules]
    missing = [n for n in names if n not in present and n not in modules]
    if missing:
        raise ValueError(f"no services/<name>/__main__.py for: {', '.join(missing)}")
    if not names:
        raise ValueError("no capability service exists yet (services/<name>/__main__.py)")
    replicas = {n: int(v) for n, v in _pairs(args.replicas, "--replicas").items()}
    extra = _pairs(args.service_args, "--service-args", split=False)
    groups = []
    for name in names:
        spec, count = capability(name), replicas.get(name, 1)
        if count < 1:
            raise ValueError(f"--replicas: {name} needs at least 1")
        fixed = range(count) if args.fixed_ports else range(0)
        groups.append(
            ServiceGroup(
                spec,
                replicas=count,
                module=modules.get(name, ""),
                args=tuple(extra.get(name, "").split()),
                ports=tuple(spec.default_port + 100 * i for i in fixed),
                metrics_ports=tuple(spec.default_metrics_port + 100 * i for i in fixed),
            )
        )
    edge = EdgeConfig(
        upstreams=(),
        edge_endpoints=(),
        descriptor_path="",
        cors_origins=tuple(args.cors_origin or EdgeConfig.cors_origins),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        trace_sample_percent=args.trace_sample_percent,
    )
    return StackConfig(
        groups=groups,
        host=args.host,
        port=args.port,
        admin_port=args.admin_port,
        run_dir=args.run_dir,
        ready_timeout=args.ready_timeout,
        stop_grace=args.stop_grace,
        edge=edge,
        playground=WEB_DIR / "dist" if args.playground else None,
        openai=args.openai,
        openai_port=OPENAI_PORT if args.fixed_ports else 0,
        otlp_endpoint=args.otlp_endpoint,
    )


def banner(stack: Stack) -> str:
    tls = bool(stack.config.edge and stack.config.edge.tls_cert)
    flag = "-insecure" if tls else "-plaintext"
    first = stack.config.groups[0].spec
    playground = stack.playground_url
    lines = [
        f"mmserve edge: {stack.address} (gRPC, grpc-web, HTTP/JSON); admin {stack.admin_url}",
        *([f"  playground: {playground} (open it in a browser)"] if playground else []),
        *([f"  OpenAI API: {stack.openai_url} (OpenAI(base_url=...))"] if stack.openai_url else []),
        *(
            f"  {g.spec.name}: {', '.join(str(e) for e in g.endpoints)} ({g.spec.service})"
            for g in stack.config.groups
        ),
        f"  logs: {stack.config.run_dir / 'logs'}",
        "try:",
        f"  grpcurl {flag} {stack.address} list",
        f'  grpcurl {flag} -d \'{{"service": "{first.service}"}}\' {stack.address} '
        "grpc.health.v1.Health/Check",
        f"  curl -s -X POST -H 'content-type: application/json' -d '{{}}' "
        f"{stack.url}/{first.service}/GetModelInfo",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"gateway.stack: {exc}", file=sys.stderr)
        return 2
    if config.playground is not None:
        try:
            ensure_built(WEB_DIR, say=lambda text: print(text, flush=True))
        except PlaygroundError as exc:
            print(f"gateway.stack: {exc}", file=sys.stderr)
            return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = Stack(config)
    try:
        stack.start()
        print(f"started {len(stack.children())} processes; logs in {config.run_dir / 'logs'}")
        try:
            if not stack.wait_ready(stop=stop):
                return 130
        except (RuntimeError, TimeoutError) as exc:
            print(f"gateway.stack: {exc}", file=sys.stderr)
            return 1
        print(banner(stack), flush=True)
        reported: set[str] = set()
        while not stop.wait(1.0):
            for child in stack.children():
                if not child.running() and child.name not in reported:
                    reported.add(child.name)
                    print(f"{child.name} exited; see {child.log_path}", flush=True)
        return 0
    finally:
        print("stopping...", flush=True)
        stack.stop()
        print("stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
