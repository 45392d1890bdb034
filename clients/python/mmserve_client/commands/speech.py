"""`say` and `transcribe` (omni): plain speech, no chat model. `say` speaks exactly the given
text and writes the file as its pieces arrive; `transcribe` prints each segment as the
recognizer finishes it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, BinaryIO

from ..clients import OmniClient
from ..events import Accepted, Queued
from ..results import Usage
from ..speech import (
    SPEECH_FORMATS,
    SegmentDone,
    Speech,
    SpeechCompleted,
    SpeechPiece,
    SpeechStarted,
    Transcription,
    TranscriptionCompleted,
    TranscriptionStarted,
)
from ..streams import JobStream
from .context import Context, _cancel_on_sigint

_SUFFIX_FORMATS = {".wav": "wav", ".pcm": "pcm", ".raw": "pcm", ".flac": "flac", ".mp3": "mp3"}
_SUFFIX_FORMATS |= {".opus": "opus", ".ogg": "opus", ".aac": "aac"}
# Flags `say` took when it went through the chat model; still accepted so old scripts run.
_OLD_SAY_FLAGS = (
    ("--system", str),
    ("--max-new-tokens", int),
    ("--temperature", float),
    ("--top-p", float),
    ("--top-k", int),
    ("--repetition-penalty", float),
    ("--seed", int),
    ("--stop", str),
)


def add_say_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", help='the text to speak, verbatim ("-" reads stdin)')
    parser.add_argument(
        "-o", "--output", default="speech.wav", help='audio file (default speech.wav; "-" stdout)'
    )
    parser.add_argument(
        "-f",
        "--format",
        choices=SPEECH_FORMATS,
        help="encoding (default: from the output's suffix, else wav)",
    )
    parser.add_argument("--voice", help="voice (see `mmserve info omni`: synthesis.voices)")
    parser.add_argument("--speed", type=float, default=0.0, help="0.25..4, 1 is normal")
    parser.add_argument("--sample-rate", type=int, default=0, help="Hz; default the voice's")
    parser.add_argument("--chunk-ms", type=int, default=0, help="streamed piece size in ms")
    parser.add_argument("--no-stream", action="store_true", help="one unary call")
    for flag, kind in _OLD_SAY_FLAGS:
        parser.add_argument(flag, type=kind, help=argparse.SUPPRESS)


def add_transcribe_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", help="audio file: WAV, FLAC, Ogg or MP3")
    parser.add_argument("-l", "--language", default="", help="ISO-639-1 code, e.g. en")
    parser.add_argument("--prompt", default="", help="text that guides spelling and style")
    parser.add_argument("--temperature", type=float, default=0.0, help="0..1; 0 is greedy")
    parser.add_argument("--segments", action="store_true", help="print [start -> end] lines")
    parser.add_argument("--no-stream", action="store_true", help="one unary call")


def _speech_format(args: argparse.Namespace) -> str:
    if args.format:
        return str(args.format)
    return _SUFFIX_FORMATS.get(Path(args.output).suffix.lower(), "wav")


def _text(args: argparse.Namespace) -> str:
    return sys.stdin.read() if args.text == "-" else str(args.text)


def _open_output(args: argparse.Namespace) -> tuple[BinaryIO, Path | None]:
    if args.output == "-":
        return sys.stdout.buffer, None
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("wb"), path


def say(ctx: Context) -> int:
    args = ctx.args
    client = ctx.client(OmniClient)
    if args.max_new_tokens is not None or args.system is not None:
        ctx.note("say speaks the text as given; chat flags are ignored")
    options: dict[str, Any] = {
        "voice": args.voice or "",
        "format": _speech_format(args),
        "speed": args.speed,
        "sample_rate": args.sample_rate,
    }
    text = _text(args)
    if args.no_stream:
        speech = client.synthesize(text, on_job=ctx.track, **options)
        sink, path = _open_output(args)
        try:
            sink.write(speech.data)
        finally:
            if path is not None:
                sink.close()
        return _said(ctx, speech.voice, speech, path, speech.seconds, speech.usage, speech.job_id)
    stream = client.stream_synthesize(text, chunk_ms=args.chunk_ms, **options)
    sink, path = _open_output(args)
    try:
        started, done = _write_stream(ctx, stream, sink)
    finally:
        if path is not None:
            sink.close()
        else:
            sink.flush()
    return _said(ctx, started.voice, started, path, done.seconds, done.usage, done.job_id)


def _write_stream(
    ctx: Context, stream: JobStream[Any], sink: BinaryIO
) -> tuple[SpeechStarted, SpeechCompleted]:
    started: SpeechStarted | None = None
    done: SpeechCompleted | None = None
    with stream, _cancel_on_sigint(stream):
        for event in stream:
            if isinstance(event, Accepted):
                ctx.track(event.job_id)
                ctx.progress.accepted(event.position, event.queue_length, event.eta_seconds)
            elif isinstance(event, Queued):
                ctx.progress.queued(event.position, event.queue_length, event.eta_seconds)
            elif isinstance(event, SpeechStarted):
                ctx.progress.finish()
                started = event
            elif isinstance(event, SpeechPiece):
                sink.write(event.data)
                sink.flush()
            elif isinstance(event, SpeechCompleted):
                done = event
    ctx.progress.finish()
    if started is None or done is None:
        raise RuntimeError("the speech stream ended early")
    return started, done


def _said(
    ctx: Context,
    voice: str,
    facts: Speech | SpeechStarted,
    path: Path | None,
    seconds: float,
    usage: Usage,
    job_id: str,
) -> int:
    where = str(path) if path is not None else "-"
    if path is not None:
        ctx.note(f"wrote {path} ({seconds:.2f}s of speech, {facts.format}, voice {voice})")
    ctx.emit(
        {
            "job_id": job_id,
            "replica": ctx.replica(job_id),
            "voice": voice,
            "audio": {
                "path": where,
                "seconds": round(seconds, 3),
                "sample_rate": facts.sample_rate,
                "format": facts.format,
                "media_type": facts.media_type,
            },
            "usage": usage,
        }
    )
    return 0


def transcribe(ctx: Context) -> int:
    args = ctx.args
    client = ctx.client(OmniClient)
    options: dict[str, Any] = {
        "language": args.language,
        "prompt": args.prompt,
        "temperature": args.temperature,
    }
    audio = Path(args.audio)
    if args.no_stream:
        result = client.transcribe(audio, on_job=ctx.track, **options)
        if not ctx.json:
            for segment in result.segments if args.segments else ():
                ctx.out.write(_segment_line(segment.start, segment.end, segment.text))
            if not args.segments:
                ctx.out.write(result.text + "\n")
            ctx.out.flush()
        return _transcribed(ctx, result)
    stream = client.stream_transcribe(audio, **options)
    result = _follow_transcription(ctx, stream, args.segments)
    return _transcribed(ctx, result)


def _segment_line(start: float, end: float, text: str) -> str:
    return f"[{start:7.2f} -> {end:7.2f}] {text.strip()}\n"


def _follow_transcription(ctx: Context, stream: JobStream[Any], lines: bool) -> Transcription:
    started: TranscriptionStarted | None = None
    done: TranscriptionCompleted | None = None
    segments = []
    with stream, _cancel_on_sigint(stream):
        for event in stream:
            if isinstance(event, Accepted):
                ctx.track(event.job_id)
                ctx.progress.accepted(event.position, event.queue_length, event.eta_seconds)
            elif isinstance(event, Queued):
                ctx.progress.queued(event.position, event.queue_length, event.eta_seconds)
            elif isinstance(event, TranscriptionStarted):
                ctx.progress.finish()
                started = event
            elif isinstance(event, SegmentDone):
                segments.append(event.segment)
                if not ctx.json:
                    segment = event.segment
                    text = segment.text.strip()
                    ctx.out.write(
                        _segment_line(segment.start, segment.end, text) if lines else text
                    )
                    ctx.out.write("" if lines else " ")
                    ctx.out.flush()
            elif isinstance(event, TranscriptionCompleted):
                done = event
    ctx.progress.finish()
    if started is None or done is None:
        raise RuntimeError("the transcription stream ended early")
    if not ctx.json and not lines:
        ctx.out.write("\n")
        ctx.out.flush()
    return Transcription(
        job_id=done.job_id,
        text=done.text,
        language=started.language,
        duration=started.duration,
        segments=tuple(segments),
        usage=done.usage,
        language_probability=started.language_probability,
    )


def _transcribed(ctx: Context, result: Transcription) -> int:
    ctx.note(
        f"[{result.language}; {result.duration:.2f}s of audio; {len(result.segments)} segments; "
        f"{result.usage.run_seconds:.2f}s; job {result.job_id}]"
    )
    ctx.emit(
        {
            "job_id": result.job_id,
            "replica": ctx.replica(result.job_id),
            "text": result.text,
            "language": result.language,
            "duration": result.duration,
            "segments": result.segments,
            "usage": result.usage,
        }
    )
    return 0
