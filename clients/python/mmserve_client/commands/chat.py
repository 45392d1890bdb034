"""`ask` (vl) and `chat` (omni): text streamed to stdout as it arrives, speech to WAV. `say`
lives in `speech` (it speaks the text itself, no chat model)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..clients import OmniClient, VLClient
from ..events import Completed
from ..results import ChatReply
from ..wire.common import SamplingOptions
from .context import Context


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--system", help="system prompt")
    parser.add_argument("--max-new-tokens", type=int, help="most tokens to generate")
    parser.add_argument("--temperature", type=float, help="0 is greedy (default)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling mass")
    parser.add_argument("--top-k", type=int, help="keep the k most likely tokens")
    parser.add_argument("--repetition-penalty", type=float, help="1 means none")
    parser.add_argument("--seed", type=int, help="sampling seed")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--no-stream", action="store_true", help="one unary call")


def sampling(args: argparse.Namespace) -> SamplingOptions:
    names = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed")
    chosen: dict[str, Any] = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if args.stop:
        chosen["stop"] = list(args.stop)
    return chosen  # type: ignore[return-value]


def _reply(ctx: Context, reply: ChatReply, audio_path: Path | None, streamed: bool) -> int:
    audio = None
    if reply.audio is not None and audio_path is not None:
        audio_path.parent.mkdir(parents=True, exist_ok=True)
        reply.audio.save(audio_path)
        audio = {
            "path": str(audio_path),
            "seconds": round(reply.audio.duration, 3),
            "sample_rate": reply.audio.sample_rate,
        }
        ctx.note(f"wrote {audio_path} ({reply.audio.duration:.2f}s of speech)")
    usage = reply.usage
    ctx.note(
        f"[{reply.finish_reason.value}; {usage.input_tokens} prompt + {usage.output_tokens} "
        f"generated tokens; {usage.run_seconds:.2f}s; job {reply.job_id}]"
    )
    ctx.emit(
        {
            "job_id": reply.job_id,
            "replica": ctx.replica(reply.job_id),
            "text": reply.text,
            "finish_reason": reply.finish_reason,
            "seed": reply.seed,
            "usage": usage,
            "audio": audio,
        },
        None if streamed else reply.text,
    )
    return 0


def _stream_reply(ctx: Context, stream: Any) -> ChatReply:
    followed = ctx.follow(stream)
    done: Completed = followed.result
    return ChatReply(
        job_id=done.job_id,
        text=followed.text,
        finish_reason=done.finish_reason,
        usage=done.usage,
        seed=done.seed,
        audio=followed.audio,
    )


def ask(ctx: Context) -> int:
    args = ctx.args
    client = ctx.client(VLClient)
    images = [Path(p) for p in args.image]
    kwargs: dict[str, Any] = {
        "images": images,
        "system": args.system,
        "min_pixels": args.min_pixels,
        "max_pixels": args.max_pixels,
    }
    if args.no_stream:
        reply = client.chat(args.prompt, on_job=ctx.track, **kwargs, **sampling(args))
        return _reply(ctx, reply, None, streamed=False)
    reply = _stream_reply(ctx, client.stream_chat(args.prompt, **kwargs, **sampling(args)))
    return _reply(ctx, reply, None, streamed=True)


def _omni(ctx: Context, prompt: str, speech: bool, system: str | None, output: Path | None) -> int:
    args = ctx.args
    client = ctx.client(OmniClient)
    kwargs: dict[str, Any] = {
        "images": [Path(p) for p in getattr(args, "image", [])],
        "audio": [Path(p) for p in getattr(args, "audio", [])],
        "system": system,
        "speech": speech,
        "voice": args.voice or "",
        "chunk_ms": args.chunk_ms,
    }
    if args.no_stream:
        reply = client.chat(prompt, on_job=ctx.track, **kwargs, **sampling(args))
        return _reply(ctx, reply, output, streamed=False)
    reply = _stream_reply(ctx, client.stream_chat(prompt, **kwargs, **sampling(args)))
    return _reply(ctx, reply, output, streamed=True)


def chat(ctx: Context) -> int:
    args = ctx.args
    output = Path(args.output) if args.output else None
    return _omni(ctx, args.prompt, args.speech or output is not None, args.system, output)
