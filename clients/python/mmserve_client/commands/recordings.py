"""`recordings` and `recording`: list an omni server's session recordings and download one."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..clients import OmniClient
from ..recordings import RECORDING_FILES
from .context import Context


def add_flags(list_parser: argparse.ArgumentParser, get_parser: argparse.ArgumentParser) -> None:
    get_parser.add_argument("session_id", help="the recorded session's id")
    get_parser.add_argument(
        "--file",
        choices=list(RECORDING_FILES),
        default="input",
        help="input (the user's audio), output (the model's speech), transcript or meta",
    )
    get_parser.add_argument(
        "-o",
        "--output",
        help="file to write (default <session_id>-<file><suffix>; '-' writes to stdout)",
    )


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else "-"


def recordings(ctx: Context) -> int:
    client = ctx.client(OmniClient)
    found = client.list_recordings()
    lines = [
        f"{r.session_id}  {r.mode:<12} {_when(r.started)}  "
        + ("recording  " if r.active else f"{r.turns} turn(s)  ")
        + f"in {r.input_seconds:.1f}s, out {r.output_seconds:.1f}s, {r.size_bytes} bytes"
        for r in found
    ]
    ctx.emit(found, "\n".join(lines) or "no recordings")
    return 0


def recording(ctx: Context) -> int:
    args = ctx.args
    client = ctx.client(OmniClient)
    data = client.download_recording(args.session_id, args.file)
    if args.output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return 0
    path = Path(args.output or f"{args.session_id}-{args.file}{RECORDING_FILES[args.file][1]}")
    path.write_bytes(data)
    ctx.emit(
        {"session_id": args.session_id, "file": args.file, "path": str(path), "bytes": len(data)},
        f"wrote {path} ({len(data)} bytes)",
    )
    return 0
