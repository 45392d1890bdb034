"""Where and how to connect: target, TLS, API key, default deadline and retry policy; builds
sync and asyncio channels and the per-call metadata from one description."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from .retry import RetryPolicy

# The servers accept messages up to 64 MiB by default (MMSERVE_MAX_MESSAGE_MB); gRPC's client
# default of 4 MiB would refuse large images long before the server does.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
JOB_ID_HEADER = "mmserve-job-id"
# Asks a unary call to send its job id in the response headers as soon as the job is accepted
# (to cancel it from elsewhere while it runs). Without it the id comes with the result, in the
# headers and the trailers, and the edge may retry the call on another replica if the one
# running it dies; with it, the call is tied to that replica once accepted.
EARLY_JOB_ID_HEADER = "mmserve-job-id-early"
REQUEST_ID_HEADER = "x-request-id"


@dataclass(frozen=True)
class Connection:
    """How to reach one service (or the Envoy edge, which routes every service by path)."""

    target: str  # "host:port"; "https://host" turns TLS on
    tls: bool = False
    root_certificates: bytes | None = None  # PEM; None with tls: the system's trust store
    server_name: str | None = None  # TLS name override (e.g. a test certificate's name)
    api_key: str | None = None  # sent as `authorization: Bearer <key>`
    timeout: float | None = None  # default deadline of every call, queue time included
    retry: RetryPolicy = field(default_factory=RetryPolicy.none)
    max_message_bytes: int = MAX_MESSAGE_BYTES
    options: tuple[tuple[str, str | int], ...] = ()  # extra grpc channel options

    @classmethod
    def create(
        cls,
        target: str,
        *,
        tls: bool | None = None,
        root_certificates: bytes | str | os.PathLike[str] | None = None,
        server_name: str | None = None,
        api_key: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | int | None = None,
        options: tuple[tuple[str, str | int], ...] = (),
    ) -> Connection:
        """Normalises the arguments every client takes: a scheme in `target` picks TLS, root
        certificates may be PEM bytes or a file path, `retry` may be a number of attempts."""
        use_tls = bool(tls)
        if target.startswith("https://"):
            target, use_tls = target.removeprefix("https://"), tls is not False
        elif target.startswith("http://"):
            target = target.removeprefix("http://")
        target = target.rstrip("/")
        certs = root_certificates
        if certs is not None and not isinstance(certs, bytes):
            certs = Path(certs).read_bytes()
        if certs is not None and tls is None:
            use_tls = True
        if isinstance(retry, int):
            retry = RetryPolicy(max_attempts=retry) if retry > 1 else RetryPolicy.none()
        return cls(
            target=target,
            tls=use_tls,
            root_certificates=certs,
            server_name=server_name,
            api_key=api_key,
            timeout=timeout,
            retry=retry or RetryPolicy.none(),
            options=options,
        )

    def channel_options(self) -> list[tuple[str, str | int]]:
        opts: list[tuple[str, str | int]] = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
        ]
        if self.server_name:
            opts.append(("grpc.ssl_target_name_override", self.server_name))
        return [*opts, *self.options]

    def _credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.root_certificates)

    def sync_channel(self) -> grpc.Channel:
        if self.tls:
            return grpc.secure_channel(self.target, self._credentials(), self.channel_options())
        return grpc.insecure_channel(self.target, self.channel_options())

    def aio_channel(self) -> grpc.aio.Channel:
        if self.tls:
            return grpc.aio.secure_channel(self.target, self._credentials(), self.channel_options())
        return grpc.aio.insecure_channel(self.target, self.channel_options())

    def metadata(self, request_id: str | None = None) -> tuple[tuple[str, str], ...]:
        """Per-call metadata: the key as a Bearer token (per call, so it also works on plain
        text channels, where gRPC refuses call credentials) and an optional request id."""
        entries: list[tuple[str, str]] = []
        if self.api_key:
            entries.append(("authorization", f"Bearer {self.api_key}"))
        if request_id:
            entries.append((REQUEST_ID_HEADER, request_id))
        return tuple(entries)

    def deadline(self, timeout: float | None) -> Deadline:
        return Deadline.after(self.timeout if timeout is None else timeout)


@dataclass(frozen=True)
class Deadline:
    """One deadline for a call and all its retries."""

    at: float | None  # time.monotonic() value, None for no deadline

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        return cls(None if seconds is None else time.monotonic() + seconds)

    def remaining(self) -> float | None:
        return None if self.at is None else max(0.0, self.at - time.monotonic())
