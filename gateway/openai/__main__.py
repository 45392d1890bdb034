"""python -m gateway.openai: serve the OpenAI-compatible API with uvicorn."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from gateway.openai.config import settings_from_args

    try:
        settings = settings_from_args(argv)
    except ValueError as exc:
        print(f"gateway.openai: {exc}", file=sys.stderr)
        return 2
    import logging

    import uvicorn

    class _NoHealthChecks(logging.Filter):
        """Envoy's health checks (every second) would drown the access log."""

        def filter(self, record: logging.LogRecord) -> bool:
            return "/v1/healthz" not in record.getMessage()

    logging.getLogger("uvicorn.access").addFilter(_NoHealthChecks())

    from gateway.openai.app import build_app

    uvicorn.run(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # httptools: uvicorn's C parser (h11 is its pure-Python fallback).
        http="httptools",
        loop=settings.loop,
        lifespan="on",
        # SIGTERM: stop accepting, let running requests end (Envoy retries elsewhere).
        timeout_graceful_shutdown=30,
        server_header=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
