"""Gracefully drain Envoy's listeners, then wait: the edge pod's preStop hook.

Envoy exits at once on SIGTERM, cutting open calls. Called before it (from the edge container,
which shares the pod's loopback with Envoy's admin interface), this asks Envoy to drain: HTTP/2
clients get GOAWAY and HTTP/1.1 clients `Connection: close` during --drain-time-s, so they move
to other edge pods while the calls in flight finish. Standard library only.

    python deploy/envoy_drain.py --admin http://127.0.0.1:9901 --wait 20
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence


def drain(admin: str, timeout: float) -> str:
    """POSTs /drain_listeners?graceful; returns Envoy's reply text."""
    request = urllib.request.Request(f"{admin}/drain_listeners?graceful", method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return reply.read().decode("utf-8", "replace").strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--admin", default="http://127.0.0.1:9901", help="Envoy admin URL.")
    parser.add_argument(
        "--wait", type=float, default=20.0, help="Seconds to stay after asking (the drain time)."
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="Admin request timeout.")
    args = parser.parse_args(argv)
    try:
        reply = drain(args.admin, args.timeout)
    except (urllib.error.URLError, OSError) as exc:
        # The kubelet logs a failed hook as an event and goes on with the shutdown anyway.
        print(f"envoy_drain: {args.admin}: {exc}", file=sys.stderr)
        return 1
    print(f"envoy_drain: {reply or 'OK'}; waiting {args.wait:g}s", flush=True)
    time.sleep(args.wait)
    return 0


if __name__ == "__main__":
    sys.exit(main())
