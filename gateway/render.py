"""Renders the Envoy config of the edge from gateway/envoy.yaml.j2 and a few parameters.

    python -m gateway.render --upstream t2i=127.0.0.1:50051 --upstream vision=10.0.0.7:50053 \
        --edge-service 127.0.0.1:50050 --out build/gateway/envoy.yaml

Without --upstream every capability is routed to its default port on 127.0.0.1. Hostnames (a
Kubernetes headless service) become STRICT_DNS clusters, so every pod IP is a replica.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from gateway.catalog import CAPABILITIES, capability
from gateway.descriptors import DEFAULT_OUT as DEFAULT_DESCRIPTORS
from gateway.descriptors import build_descriptor_set

TEMPLATE = Path(__file__).with_name("envoy.yaml.j2")
EDGE_CLUSTER = "edge"
# The browser playground's static files (gateway/static.py), when the edge serves them.
PLAYGROUND_CLUSTER = "playground"
# The OpenAI-compatible HTTP service (python -m gateway.openai), when the edge routes /v1/.
OPENAI_CLUSTER = "openai"
# The OpenTelemetry collector Envoy sends its spans to, when tracing.
OTLP_CLUSTER = "otlp_collector"
# The edge service reports itself under this health name (its cluster's own check); the
# capabilities' names report their replicas (see gateway/edge.py).
EDGE_HEALTH_SERVICE = "mmserve.edge"
DEFAULT_EDGE_PORT = 50050


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        host, sep, port = text.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"expected host:port, got {text!r}")
        return cls(host.strip("[]"), int(port))

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Upstream:
    """One Envoy cluster: a capability's replicas (or the edge service's)."""

    name: str
    health_service: str
    endpoints: tuple[Endpoint, ...]
    service: str = ""  # full proto service name routed here; empty for the edge cluster
    streaming_methods: tuple[str, ...] = ()
    # Unary methods the edge must not run twice (see AT_MOST_ONCE).
    at_most_once_methods: tuple[str, ...] = ()

    @property
    def dns(self) -> bool:
        return not all(ep.is_ip for ep in self.endpoints)


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class EdgeConfig:
    """Every parameter of the edge. Scalar fields are also flags of `python -m gateway.render`."""

    upstreams: tuple[Upstream, ...]
    edge_endpoints: tuple[Endpoint, ...]
    descriptor_path: str
    listen_host: str = field(default="127.0.0.1", metadata=_help("Edge listen address."))
    listen_port: int = field(default=8080, metadata=_help("Edge port (gRPC, grpc-web, JSON)."))
    admin_port: int = field(default=9901, metadata=_help("Envoy admin port, on 127.0.0.1."))
    cors_origins: tuple[str, ...] = ("http://localhost:3000", "http://127.0.0.1:3000")
    tls_cert: str = field(default="", metadata=_help("PEM certificate: serve TLS (h2, http/1.1)."))
    tls_key: str = field(default="", metadata=_help("PEM private key of --tls-cert."))
    replica_header: str = field(
        default="mmserve-replica",
        metadata=_help("Header naming the replica that served a call; send it back to pin."),
    )
    max_message_mb: int = field(default=64, metadata=_help("The services' max message size."))
    connect_timeout_s: float = field(default=1.0, metadata=_help("Upstream connect timeout."))
    unary_timeout_s: float = field(
        default=600.0, metadata=_help("Longest unary call (queue + run); 0 for none.")
    )
    stream_idle_timeout_s: float = field(
        default=60.0, metadata=_help("Idle stream timeout; keep above the services' heartbeat.")
    )
    max_stream_duration_s: float = field(
        default=3600.0, metadata=_help("Longest stream or call through the edge (a cap).")
    )
    health_interval_s: float = field(default=1.0, metadata=_help("Active health check interval."))
    health_timeout_s: float = field(default=1.0, metadata=_help("Health check timeout."))
    unhealthy_threshold: int = field(default=1, metadata=_help("Failed checks to leave rotation."))
    healthy_threshold: int = field(default=1, metadata=_help("Passed checks to rejoin."))
    num_retries: int = field(default=2, metadata=_help("Retries of a unary call."))
    retry_base_interval_s: float = field(default=0.05, metadata=_help("Retry back-off base."))
    retry_max_interval_s: float = field(default=0.5, metadata=_help("Retry back-off cap."))
    outlier_consecutive_failures: int = field(
        default=3, metadata=_help("Consecutive gateway failures that eject a replica.")
    )
    outlier_interval_s: float = field(default=1.0, metadata=_help("Outlier sweep interval."))
    outlier_ejection_s: float = field(default=10.0, metadata=_help("Base ejection time."))
    outlier_max_ejection_percent: int = field(
        default=50, metadata=_help("Most replicas of a cluster ejected at once (percent).")
    )
    cb_max_connections: int = field(default=1024, metadata=_help("Circuit breaker: connections."))
    cb_max_pending_requests: int = field(
        default=1024, metadata=_help("Circuit breaker: requests waiting for a connection.")
    )
    cb_max_requests: int = field(default=2048, metadata=_help("Circuit breaker: open requests."))
    cb_max_retries: int = field(default=64, metadata=_help("Circuit breaker: concurrent retries."))
    max_concurrent_streams: int = field(
        default=1024, metadata=_help("HTTP/2 streams per downstream connection.")
    )
    max_downstream_connections: int = field(
        default=10000, metadata=_help("Downstream connections Envoy accepts in all.")
    )
    buffer_limit_bytes: int = field(
        default=4 * 1024 * 1024, metadata=_help("Per-connection flow-control buffer.")
    )
    access_log: bool = field(default=True, metadata=_help("JSON access log on stdout."))
    otlp_endpoint: str = field(
        default="",
        metadata=_help(
            "OTLP/gRPC collector for Envoy's spans (http://host:4317; https:// for TLS); "
            "empty: no tracing at the edge."
        ),
    )
    trace_sample_percent: float = field(
        default=100.0, metadata=_help("Calls Envoy starts a sampled trace for, in percent.")
    )
    # A static file server with the browser playground (gateway/static.py): GET and HEAD of
    # every path no gRPC route takes go there. None: no such route (the default).
    playground: Endpoint | None = None
    # The OpenAI-compatible HTTP service(s) (gateway/openai): every /v1/ path goes there.
    # Empty: no such route (the default). A hostname becomes a STRICT_DNS cluster.
    openai: tuple[Endpoint, ...] = ()

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        if self.otlp_endpoint:
            self.otlp  # noqa: B018  (fails now, naming the endpoint, rather than at render)
        if not 0.0 <= self.trace_sample_percent <= 100.0:
            raise ValueError(
                f"trace_sample_percent must be in [0, 100], not {self.trace_sample_percent}"
            )

    @property
    def otlp(self) -> Endpoint:
        """The collector's address: otlp_endpoint without its scheme (http, https or none)."""
        _, _, address = self.otlp_endpoint.rpartition("://")
        return Endpoint.parse(address.rstrip("/"))

    @property
    def otlp_tls(self) -> bool:
        return self.otlp_endpoint.startswith("https://")

    @property
    def otlp_cluster(self) -> str:
        return OTLP_CLUSTER

    @property
    def clusters(self) -> tuple[Upstream, ...]:
        return self.upstreams

    @property
    def all_clusters(self) -> tuple[Upstream, ...]:
        edge = Upstream(EDGE_CLUSTER, EDGE_HEALTH_SERVICE, self.edge_endpoints)
        return (*self.upstreams, edge)

    @property
    def playground_cluster(self) -> str:
        return PLAYGROUND_CLUSTER

    @property
    def openai_cluster(self) -> str:
        return OPENAI_CLUSTER

    @property
    def openai_dns(self) -> bool:
        return not all(ep.is_ip for ep in self.openai)

    @property
    def json_body_limit_bytes(self) -> int:
        # base64 grows bytes by 4/3; field names and escapes need a little more.
        return self.max_message_mb * 1024 * 1024 * 3 // 2


# Unary methods whose effect would repeat if the edge ran them again on another replica after
# the first one died while handling them: a session's state, the voice registry, a cancel.
# The edge retries these only when the request never reached a handler. Every other unary
# method changes no state (inference, reads of jobs, voices, models, recordings) and is retried
# after a reset too. A new RPC with side effects belongs here; the names are checked against
# the contracts (tests/e2e/test_replica_failover.py).
AT_MOST_ONCE_EVERYWHERE = ("CancelJob",)
AT_MOST_ONCE: dict[str, tuple[str, ...]] = {
    "omni": (
        "OpenSession",
        "PushSessionInput",
        "PauseSession",
        "ResumeSession",
        "CloseSession",
        "RegisterVoice",
        "DeleteVoice",
    ),
}


def at_most_once_methods(name: str) -> tuple[str, ...]:
    """The unary methods of capability `name` that the edge must not run twice."""
    spec = capability(name)
    wanted = (*AT_MOST_ONCE_EVERYWHERE, *AT_MOST_ONCE.get(name, ()))
    return tuple(m for m in spec.unary_methods if m in wanted)


def capability_upstream(name: str, endpoints: Sequence[Endpoint]) -> Upstream:
    spec = capability(name)
    return Upstream(
        name=spec.name,
        health_service=spec.service,
        endpoints=tuple(endpoints),
        service=spec.service,
        streaming_methods=spec.streaming_methods,
        at_most_once_methods=at_most_once_methods(name),
    )


def _duration(seconds: float) -> str:
    # Envoy durations: "0s" turns a timeout off, fractions keep millisecond precision.
    return f"{round(seconds, 3):g}s"


def render(config: EdgeConfig) -> str:
    if not config.upstreams or not config.edge_endpoints:
        raise ValueError("nothing to route: no upstream capability or no edge service")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent),
        undefined=jinja2.StrictUndefined,  # a missing parameter fails, never renders empty
        keep_trailing_newline=True,
        autoescape=False,  # YAML, not HTML
    )
    env.filters["dur"] = _duration
    env.filters["tojson"] = json.dumps  # JSON strings are valid YAML scalars
    return env.get_template(TEMPLATE.name).render(c=config)


# --- command line ---
_SCALARS = {f.name: f for f in dataclasses.fields(EdgeConfig) if f.metadata.get("help") is not None}


def _parse_upstream(text: str) -> tuple[str, tuple[Endpoint, ...]]:
    name, sep, addresses = text.partition("=")
    if not sep or not addresses:
        raise argparse.ArgumentTypeError(f"expected NAME=host:port[,host:port...], got {text!r}")
    try:
        capability(name)
        return name, tuple(Endpoint.parse(a) for a in addresses.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.render",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--upstream",
        action="append",
        type=_parse_upstream,
        default=[],
        help="Capability replicas, NAME=host:port[,host:port...]; repeat per capability "
        f"({', '.join(CAPABILITIES)}). Default: each on its default port on 127.0.0.1.",
    )
    parser.add_argument(
        "--edge-service",
        default=f"127.0.0.1:{DEFAULT_EDGE_PORT}",
        help="Edge service(s) answering health and reflection, host:port[,host:port...].",
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=None,
        help="Allowed browser origin (repeat; '*' for any). Default: localhost:3000.",
    )
    parser.add_argument(
        "--descriptors",
        type=Path,
        default=DEFAULT_DESCRIPTORS,
        help="Descriptor set for the JSON transcoder (built there with --build-descriptors).",
    )
    parser.add_argument(
        "--build-descriptors",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Compile protos/ into --descriptors first.",
    )
    parser.add_argument(
        "--playground",
        type=Endpoint.parse,
        default=None,
        help="Static file server with the browser playground, host:port (python -m "
        "gateway.static): GET/HEAD of other paths go there. Default: no playground route.",
    )
    parser.add_argument(
        "--openai",
        default="",
        help="OpenAI-compatible service(s) (python -m gateway.openai), host:port[,host:port...]: "
        "every /v1/ path goes there. Default: no /v1/ route.",
    )
    parser.add_argument("--out", type=Path, default=None, help="Output file; stdout if unset.")
    for name, f in _SCALARS.items():
        flag, text = "--" + name.replace("_", "-"), f.metadata["help"]
        if f.type in ("bool", bool):
            action = argparse.BooleanOptionalAction
            parser.add_argument(flag, action=action, default=f.default, help=text)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=f.default, help=text)
    return parser


def config_from_args(args: argparse.Namespace) -> EdgeConfig:
    upstreams = dict(args.upstream) or {
        spec.name: (Endpoint("127.0.0.1", spec.default_port),) for spec in CAPABILITIES.values()
    }
    scalars = {name: getattr(args, name) for name in _SCALARS}
    return EdgeConfig(
        upstreams=tuple(capability_upstream(n, eps) for n, eps in upstreams.items()),
        edge_endpoints=tuple(Endpoint.parse(a) for a in args.edge_service.split(",")),
        descriptor_path=str(Path(args.descriptors).resolve()),
        cors_origins=tuple(args.cors_origin) if args.cors_origin else EdgeConfig.cors_origins,
        playground=args.playground,
        openai=tuple(Endpoint.parse(a) for a in args.openai.split(",") if a.strip()),
        **scalars,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"gateway.render: {exc}", file=sys.stderr)
        return 2
    if args.build_descriptors:
        build_descriptor_set(Path(config.descriptor_path))
    text = render(config)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
