"""What every CLI command uses: clients built from the common flags, the job being run (so
Ctrl-C can cancel it), stream following with progress, and output (human text or --json)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, TextIO, TypeVar

from ..audio import AudioClip
from ..clients import Client
from ..errors import Cancelled, MMServeError
from ..events import Accepted, Completed, Progress, Queued, TextDelta
from ..progress import ProgressReporter
from ..results import Generation
from ..streams import JobStream

C = TypeVar("C", bound=Client)

TARGET_ENV = "MMSERVE_TARGET"
API_KEY_ENV = "MMSERVE_API_KEY"


def plain(value: Any) -> Any:
    """Dataclasses, enums, paths, datetimes and numpy values as JSON-friendly values."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    return value


@dataclass(frozen=True)
class Followed:
    result: Any  # Generation or Completed
    text: str
    audio: AudioClip | None


@dataclass
class Context:
    args: argparse.Namespace
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    # The call in progress: on Ctrl-C the CLI cancels `job_id` on `job_client`.
    job_client: Client | None = None
    job_id: str = ""
    clients: list[Client] = field(default_factory=list)

    def __post_init__(self) -> None:
        quiet = bool(getattr(self.args, "quiet", False))
        self.progress = ProgressReporter(self.err, enabled=not quiet)

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    def client(self, cls: type[C]) -> C:
        args = self.args
        retries = max(0, int(getattr(args, "retries", 0) or 0))
        client = cls(
            args.target or os.environ.get(TARGET_ENV) or None,
            tls=True if args.tls else None,
            root_certificates=args.ca_file,
            server_name=args.server_name,
            api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
            timeout=args.timeout,
            retry=retries + 1,
        )
        self.clients.append(client)
        self.job_client = client
        return client

    def track(self, job_id: str) -> None:
        self.job_id = job_id

    def replica(self, job_id: str) -> str | None:
        """The job's mmserve-replica value behind the edge (for `job --replica`), else None."""
        if self.job_client is None:
            return None
        return self.job_client.replica_of(job_id) or None

    def close(self) -> None:
        for client in self.clients:
            client.close()

    # --- output ---
    def emit(self, data: Any, human: str | None = None) -> None:
        """The command's result: JSON with --json, else the human text (if any)."""
        if self.json:
            self.out.write(json.dumps(plain(data), ensure_ascii=False) + "\n")
        elif human:
            self.out.write(human + ("" if human.endswith("\n") else "\n"))
        self.out.flush()

    def note(self, text: str) -> None:
        """An informational line on stderr (silenced by --quiet)."""
        self.progress.message(text)

    def note_model_notice(self) -> None:
        """Tells the person what the service says about its model, e.g. that a built-in with
        random weights makes noise by design (asked once, after the result)."""
        if self.job_client is None or getattr(self.args, "quiet", False):
            return
        try:
            model = self.job_client.info(timeout=5).model
        except MMServeError:
            return  # a courtesy: never fail a finished command over it
        if model.notice:
            self.note(f"note: {model.notice}")

    # --- streams ---
    def follow(self, stream: JobStream[Any], echo_text: bool = True) -> Followed:
        """Reads a job stream to its end: progress and queue position on stderr, text deltas
        to stdout as they arrive (not with --json); returns the result with the joined text
        and speech."""
        final: Any = None
        printed_text = False
        with stream, _cancel_on_sigint(stream):
            for event in stream:
                if isinstance(event, Accepted):
                    self.track(event.job_id)
                    self.progress.accepted(event.position, event.queue_length, event.eta_seconds)
                elif isinstance(event, Queued):
                    self.progress.queued(event.position, event.queue_length, event.eta_seconds)
                elif isinstance(event, Progress):
                    self.progress.step(
                        event.step, event.total, event.elapsed_seconds, event.eta_seconds
                    )
                    self.on_preview(event)
                elif isinstance(event, TextDelta) and echo_text and not self.json:
                    self.progress.finish()
                    self.out.write(event.text)
                    self.out.flush()
                    printed_text = True
                elif isinstance(event, Generation | Completed):
                    final = event
            if printed_text:
                self.out.write("\n")
                self.out.flush()
            self.progress.finish()
            return Followed(final, stream.text, stream.audio)

    def on_preview(self, event: Progress) -> None:
        folder = getattr(self.args, "preview_dir", None)
        if folder and event.preview is not None:
            path = Path(folder)
            path.mkdir(parents=True, exist_ok=True)
            event.preview.save(path / f"preview-{event.step:04d}.png")


@contextlib.contextmanager
def _cancel_on_sigint(stream: JobStream[Any]) -> Iterator[None]:
    """Ctrl-C while following a stream cancels the call from the signal handler, and the
    stream then ends as CANCELLED, re-raised here as KeyboardInterrupt. The default handler
    would raise KeyboardInterrupt wherever the main thread happens to be, which can be inside
    grpc's own wait for the next message and leave that call to run on until the server ends
    it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupted = False

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal interrupted
        interrupted = True
        stream.cancel()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    except Cancelled:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt
