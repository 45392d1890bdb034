"""The `mmserve` command (also `python -m mmserve_client`): every capability from a shell.

Exit status: 0 success; 1 a local error (unreadable file, bad value); 2 a usage error;
10 + the gRPC status number when a call fails (13 INVALID_ARGUMENT, 14 DEADLINE_EXCEEDED,
15 NOT_FOUND, 18 RESOURCE_EXHAUSTED, 19 FAILED_PRECONDITION, 22 UNIMPLEMENTED, 23 INTERNAL,
24 UNAVAILABLE, 26 UNAUTHENTICATED, ...; `health` exits 24 when a service is not serving);
130 when Ctrl-C interrupted a call (its server job is cancelled first).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from .commands import chat, collections, recordings, service, speech, t2i, vision
from .commands.context import Context
from .errors import MMServeError

INTERRUPTED = 130
LOCAL_ERROR = 1
CAPABILITIES = ["t2i", "vl", "vision", "omni"]

Handler = Callable[[Context], int]


def _connection_flags(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The same flags before or after the subcommand; after it they only override when given."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--target",
        default=default(None),
        help="host:port of the service or the Envoy edge; https://host for TLS "
        "(env MMSERVE_TARGET; default: the capability's local port 5005x)",
    )
    group.add_argument("--tls", action="store_true", default=default(False), help="use TLS")
    group.add_argument("--ca-file", default=default(None), help="PEM root certificates (TLS)")
    group.add_argument("--server-name", default=default(None), help="TLS server name override")
    group.add_argument(
        "--api-key", default=default(None), help="API key (env MMSERVE_API_KEY), sent as Bearer"
    )
    group.add_argument(
        "--timeout", type=float, default=default(None), help="deadline in seconds, queue included"
    )
    group.add_argument(
        "--retries",
        type=int,
        default=default(3),
        help="retries of RESOURCE_EXHAUSTED after the server's delay (default 3)",
    )
    group.add_argument(
        "--json", action="store_true", default=default(False), help="JSON result on stdout"
    )
    group.add_argument(
        "-q", "--quiet", action="store_true", default=default(False), help="no progress output"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmserve",
        description="Client for mmserve's t2i, vl, vision and omni services.",
        epilog="Exit status: 0 ok, 1 local error, 2 usage, 10+N gRPC status N "
        "(13 invalid argument, 14 deadline, 18 resource exhausted, 24 unavailable, ...), "
        "130 interrupted (server job cancelled). See docs/clients.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _connection_flags(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _connection_flags(common, suppress=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    # --- t2i ---
    sub = command("generate", t2i.generate, "text to image, with a progress bar (t2i)")
    sub.add_argument("prompt")
    t2i.add_generation_flags(sub)
    sub = command("edit", t2i.edit, "image to image guided by a prompt (t2i)")
    sub.add_argument("image", help="input image file")
    sub.add_argument("prompt")
    sub.add_argument("--strength", type=float, help="how much to change the input, (0, 1]")
    t2i.add_generation_flags(sub)
    sub = command("inpaint", t2i.inpaint, "repaint the masked part of an image (t2i)")
    sub.add_argument("image", help="input image file")
    sub.add_argument("mask", help="mask file, the image's size: white is repainted, black kept")
    sub.add_argument("prompt", help="what to paint into the masked part")
    sub.add_argument("--strength", type=float, help="how much to change the masked part (0, 1]")
    t2i.add_generation_flags(sub)
    sub = command("instruct", t2i.instruct, "edit an image by an instruction (t2i edit models)")
    sub.add_argument("image", help="input image file")
    sub.add_argument("instruction", help='what to change, e.g. "make the sky purple"')
    t2i.add_generation_flags(sub)

    # --- vl and omni ---
    sub = command("ask", chat.ask, "ask about images; the answer streams as it is written (vl)")
    sub.add_argument("prompt")
    sub.add_argument("-i", "--image", action="append", default=[], help="image file (repeatable)")
    sub.add_argument("--min-pixels", type=int, default=0, help="image resolution lower bound")
    sub.add_argument("--max-pixels", type=int, default=0, help="image resolution upper bound")
    chat.add_sampling_flags(sub)
    sub = command("chat", chat.chat, "omni chat with images and audio; speech optional (omni)")
    sub.add_argument("prompt")
    sub.add_argument("-i", "--image", action="append", default=[], help="image file (repeatable)")
    sub.add_argument("-a", "--audio", action="append", default=[], help="audio file (repeatable)")
    sub.add_argument("--speech", action="store_true", help="ask for a spoken reply")
    sub.add_argument("-o", "--output", help="write the spoken reply here (WAV; implies --speech)")
    sub.add_argument("--voice", help="voice id (see `mmserve voices`)")
    sub.add_argument("--chunk-ms", type=int, default=0, help="streamed audio chunk size")
    chat.add_sampling_flags(sub)
    sub = command("say", speech.say, "speak exactly the given text into an audio file (omni)")
    speech.add_say_flags(sub)
    sub = command("transcribe", speech.transcribe, "speech to text with timed segments (omni)")
    speech.add_transcribe_flags(sub)

    # --- vision ---
    sub = command("embed", vision.embed, "embed images and/or texts (vision)")
    sub.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    sub.add_argument("--text", action="append", default=[], help="text (repeatable)")
    sub.add_argument("-o", "--output", help="save the vectors as .npy (images first, then texts)")
    sub.add_argument("--no-normalize", action="store_true", help="keep raw vector lengths")
    sub.add_argument("--pooling", choices=["cls", "mean"], help="DINO pooling")
    item_help = 'an image file or a text; force with "image:PATH" or "text:..."'
    sub = command("similarity", vision.similarity, "score queries against candidates (vision)")
    sub.add_argument("-Q", "--query", action="append", required=True, help=item_help)
    sub.add_argument("-C", "--candidate", action="append", required=True, help=item_help)
    sub.add_argument("--metric", choices=["cosine", "logits"], default="cosine")
    sub = command("classify", vision.classify, "zero-shot image classification (vision)")
    sub.add_argument("image", nargs="+", help="image files")
    sub.add_argument(
        "-l", "--labels", action="append", required=True, help="comma-separated labels"
    )
    sub.add_argument(
        "-t", "--template", action="append", default=[], help='prompt template with "{}"'
    )
    sub.add_argument("-k", "--top-k", type=int, default=0, help="labels per image (0: all)")
    sub = command("rank", vision.rank, "rank candidates for a query (vision)")
    sub.add_argument("query", help=item_help)
    sub.add_argument("candidates", nargs="+", help=item_help)
    sub.add_argument("-k", "--top-k", type=int, default=0, help="results (0: all)")
    sub.add_argument("--metric", choices=["cosine", "logits"], default="cosine")
    collections.add_flags(
        command("index", collections.index, "embed a folder of images into a collection (vision)"),
        command("search", collections.search, "search a collection by text, image or id (vision)"),
        command("collections", collections.collections, "list or delete collections (vision)"),
    )

    # --- every service ---
    sub = command("health", service.health, "grpc.health.v1 status of services")
    sub.add_argument(
        "capability",
        nargs="*",
        metavar="CAPABILITY",
        help=f"any of {', '.join(CAPABILITIES)} (default: all four)",
    )
    sub.add_argument("--wait", type=float, default=0.0, help="wait up to this long for SERVING")
    sub = command("info", service.info, "the model a service runs and its limits")
    sub.add_argument("capability", choices=CAPABILITIES)
    sub = command("job", service.job, "a job's state, queue position and progress")
    sub.add_argument("capability", choices=CAPABILITIES)
    sub.add_argument("job_id")
    sub.add_argument("--watch", action="store_true", help="poll until the job has finished")
    sub.add_argument("--replica", help="the job's mmserve-replica value (from --json output)")
    sub.add_argument("--interval", type=float, default=0.5, help="seconds between polls")
    sub = command("cancel", service.cancel, "cancel a queued or running job")
    sub.add_argument("capability", choices=CAPABILITIES)
    sub.add_argument("job_id")
    sub.add_argument("--replica", help="the job's mmserve-replica value (from --json output)")
    command("voices", service.voices, "list the omni service's voices")
    listing = command("recordings", recordings.recordings, "list session recordings (omni)")
    getting = command("recording", recordings.recording, "download a session recording (omni)")
    recordings.add_flags(listing, getting)
    return parser


def _cancel_job(ctx: Context) -> None:
    """After Ctrl-C: the call itself was cancelled already (which cancels the server job); an
    explicit CancelJob makes sure of it where a proxy may not pass the cancellation on."""
    if not ctx.job_id or ctx.job_client is None:
        ctx.err.write("interrupted\n")
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this
    try:
        job = ctx.job_client.cancel_job(ctx.job_id, timeout=5.0)
        ctx.err.write(f"interrupted: job {ctx.job_id} {job.state.value}\n")
    except MMServeError as error:
        ctx.err.write(f"interrupted: job {ctx.job_id} ({error.code.name.lower()})\n")
    finally:
        signal.signal(signal.SIGINT, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = set(getattr(args, "capability", None) or ()) - set(CAPABILITIES)
    if args.command == "health" and unknown:
        parser.error(f"health: unknown capability {', '.join(sorted(unknown))}")
    ctx = Context(args)
    try:
        return int(args.handler(ctx))
    except KeyboardInterrupt:
        ctx.progress.finish()
        _cancel_job(ctx)
        return INTERRUPTED
    except MMServeError as error:
        ctx.progress.finish()
        if ctx.json:
            ctx.emit({"error": error.to_dict()})
        ctx.err.write(f"error: {error}\n")
        return service.exit_code(error.code)
    except (OSError, ValueError, TypeError) as error:
        ctx.progress.finish()
        if ctx.json:
            ctx.emit({"error": {"code": "LOCAL", "message": str(error)}})
        ctx.err.write(f"error: {error}\n")
        return LOCAL_ERROR
    finally:
        ctx.close()


if __name__ == "__main__":
    sys.exit(main())
