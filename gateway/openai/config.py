"""Settings of the OpenAI-compatible service: flags, each also an environment variable."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.catalog import CAPABILITIES, capability

DEFAULT_PORT = 8090
ENV_PREFIX = "MMSERVE_OPENAI_"


@dataclass(frozen=True)
class OpenAISettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # Capability name -> gRPC target ("127.0.0.1:50052", "dns:///vl.mmserve.svc:50052",
    # "ipv4:10.0.0.5:50052,10.0.0.6:50052"). Capabilities left out are not served.
    upstreams: dict[str, str] = field(default_factory=dict)
    request_timeout_s: float = 600.0
    max_body_mb: float = 96.0
    model_refresh_s: float = 30.0
    log_level: str = "info"
    loop: str = "asyncio"

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


def _env(name: str, default: str) -> str:
    return os.environ.get(ENV_PREFIX + name.upper(), default)


def parse_upstreams(values: Sequence[str]) -> dict[str, str]:
    """NAME=TARGET items (also comma-free lists of them separated by ';')."""
    found: dict[str, str] = {}
    for item in values:
        for part in item.split(";"):
            if not part.strip():
                continue
            name, sep, target = part.strip().partition("=")
            if not sep or not target:
                raise ValueError(f"--upstream: expected NAME=TARGET, got {part!r}")
            capability(name)
            found[name] = target
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.openai",
        description="OpenAI-compatible HTTP API (chat completions, embeddings, images, audio, "
        "models) over the mmserve capability services. Every flag is also an environment "
        f"variable {ENV_PREFIX}<FLAG> (dashes as underscores); flags win.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default=_env("host", "127.0.0.1"), help="Listen address.")
    parser.add_argument(
        "--port", type=int, default=int(_env("port", str(DEFAULT_PORT))), help="Listen port."
    )
    defaults = ";".join(f"{s.name}=127.0.0.1:{s.default_port}" for s in CAPABILITIES.values())
    parser.add_argument(
        "--upstream",
        action="append",
        default=None,
        help="A capability's gRPC target, NAME=TARGET (repeat; or ';'-separated). TARGET is "
        "any gRPC target: host:port, dns:///name:port (every address of a headless Service, "
        "round-robin), ipv4:a:port,b:port. Capabilities not named are not served. "
        f"Default: {defaults} (env {ENV_PREFIX}UPSTREAM).",
    )
    parser.add_argument(
        "--request-timeout-s",
        type=float,
        default=float(_env("request_timeout_s", "600")),
        help="Deadline of each gRPC call (queue + run) unless the request's x-request-timeout "
        "header asks for less; past it the job is cancelled and the client gets 504.",
    )
    parser.add_argument(
        "--max-body-mb",
        type=float,
        default=float(_env("max_body_mb", "96")),
        help="Largest request body; larger ones get 413 before any upstream call (base64 "
        "images are 4/3 of their bytes: keep it above the services' 64 MiB message limit "
        "x 4/3 to let the services decide).",
    )
    parser.add_argument(
        "--model-refresh-s",
        type=float,
        default=float(_env("model_refresh_s", "30")),
        help="How long the served models (GetModelInfo of each upstream) are cached; an "
        "unknown model name refreshes at once.",
    )
    parser.add_argument(
        "--loop",
        default=_env("loop", "asyncio"),
        choices=["asyncio", "uvloop"],
        help="Event loop. grpc.aio is built for the standard asyncio loop; uvloop measured no "
        "faster here (bench/results/openai.md).",
    )
    parser.add_argument(
        "--log-level",
        default=_env("log_level", "info"),
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (access lines at info).",
    )
    return parser


def settings_from_args(argv: Sequence[str] | None = None) -> OpenAISettings:
    args = build_parser().parse_args(argv)
    values = args.upstream or [_env("upstream", "")]
    upstreams = parse_upstreams([v for v in values if v])
    if not upstreams and args.upstream is None:
        upstreams = {s.name: f"127.0.0.1:{s.default_port}" for s in CAPABILITIES.values()}
    return OpenAISettings(
        host=args.host,
        port=args.port,
        upstreams=upstreams,
        request_timeout_s=args.request_timeout_s,
        max_body_mb=args.max_body_mb,
        model_refresh_s=args.model_refresh_s,
        log_level=args.log_level,
        loop=args.loop,
    )
