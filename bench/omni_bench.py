"""omni benchmark: time to first text token, time to first audio chunk and the real-time factor of
the speech stream, served vs in-process.

The default local omni model (the real SmolLM2-135M-Instruct, Whisper tiny.en, the Piper
en_US-joe-medium voice, in every profile) answers the same questions, greedy,
with speech on:
- in-process: `services.omni.engine.OmniEngine.respond` called directly (same model code, no
  gRPC, no executor) on a dedicated thread, timed from the call to the first text delta / first
  audio chunk;
- served: `python -m services.omni`, StreamChat straight to its port and through Envoy, timed at
  the client from sending the request to the first `delta` / `audio` event.
RTF = wall time of the whole reply / seconds of speech it produced (below 1: speech is made
faster than it plays). One client (omni serves one reply at a time).

Live sessions ("spoken turn" cells): a question spoken by the Piper voice is pushed into a
half-duplex session in 100 ms PCM chunks at real time (each chunk when its last sample would
have been captured), followed by silence; every part is timed at the client from the end of the
user's speech: `vad_ms` (the session's "vad: speech ended" state: the VAD silence window),
`asr_ms` (the transcript), `ttft_ms` (first reply text), `ttfa_ms` (first reply audio) and the
turn's end (the cell's latency). One fresh session per question, so every turn starts alike.
`python bench/omni_bench.py --session-latency [--turns N] [--target HOST:PORT]` prints these
parts alone (starting a server unless --target names one; `--server-args "FLAGS"` passes it
flags). `--compare "FLAGS"` starts a second server with those flags and alternates the turns
between the two, so a setting is measured on and off under the same load (e.g.
`--compare=--no-session-early-asr`); the load average is printed beside the figures.

Part of the runner: `python -m bench.run --capabilities omni` (this file run as a script is the
same).
"""

from __future__ import annotations

import functools
import itertools
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import from the repository, not from bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # bench/profile.py shadows stdlib's

from bench import kit

QUESTIONS = (
    "What is the capital of France?",
    "Give me two tips for sleeping well.",
    "Why is the sky blue?",
)
CHUNK_MS = 200


# The native talker's speech on the tiny Qwen3-Omni (random weights: its talker speaks until
# its frame limit), vocoded after the whole reply or every NATIVE_CHUNK codes while the talker
# runs (native_speech_chunk_codes): what streaming the vocoder does to time to first audio.
NATIVE_FRAMES = 96
NATIVE_CHUNK = 12
NATIVE_TOKENS = 8
NATIVE_VARIANTS = {
    "native speech, tiny Qwen3-Omni, whole-reply vocoder": 0,
    f"native speech, tiny Qwen3-Omni, vocoder every {NATIVE_CHUNK} codes": NATIVE_CHUNK,
}


def model_flags(plan: kit.Plan) -> list[str]:
    # The default local model in every profile: the tiny Qwen2.5-Omni's random talker speaks
    # until its token limit, minutes per reply on CPU.
    return plan.server_flags("omni")


def native_flags(plan: kit.Plan, chunk_codes: int) -> list[str]:
    return [
        *("--model", "builtin:tiny-qwen3-omni", "--asr-model", "none", "--tts-model", "none"),
        *("--talker-max-new-tokens", str(NATIVE_FRAMES)),
        *("--native-speech-chunk-codes", str(chunk_codes)),
        *plan.server_flags("omni"),
    ]


class InProcess:
    def __init__(self, plan: kit.Plan, flags: Sequence[str], tokens: int) -> None:
        from services.omni.config import OmniSettings
        from services.omni.engine import OmniEngine
        from services.runtime.config import load_settings

        data_dir = tempfile.mkdtemp(prefix="omni-bench-")
        settings = load_settings(OmniSettings, ["--data-dir", data_dir, *flags])
        self.device = ThreadPoolExecutor(1, thread_name_prefix="device")
        self.engine = OmniEngine(settings)
        self.device.submit(self._load).result()
        self.tokens = tokens
        self.asked = itertools.count()  # each path asks the questions in the same order

    def _load(self) -> None:
        self.engine.load()
        self.engine.warmup()

    def _respond(self, question: str) -> kit.Sample:
        from services.omni.turns import ChatJob, SpeechRequest
        from services.runtime.chat.messages import Message, Role, TextPart
        from services.runtime.chat.sampling import Sampling

        engine = self.engine
        sampling = engine.resolve_sampling(Sampling(max_new_tokens=self.tokens, temperature=0.0))
        speech = SpeechRequest(enabled=True, chunk_ms=CHUNK_MS)
        job = ChatJob((Message(Role.USER, (TextPart(question),)),), sampling, speech)
        marks: dict[str, float] = {}
        started = time.perf_counter()
        result = engine.respond(
            job,
            engine.resolve_voice(speech),
            emit_text=lambda _: marks.setdefault("text", time.perf_counter()),
            emit_audio=lambda _: marks.setdefault("audio", time.perf_counter()),
        )
        total = time.perf_counter() - started
        return kit.Sample(total, batch=1, extra=_extra(started, marks, total, result.audio_seconds))

    def one(self, _index: int) -> tuple[kit.Sample, float]:
        question = QUESTIONS[next(self.asked) % len(QUESTIONS)]
        return self.device.submit(self._respond, question).result(), 1.0

    def measure(self, replies: int) -> kit.Run:
        return kit.timed_sequence(self.one, replies)

    def close(self) -> None:
        self.device.shutdown()


def _extra(started: float, marks: dict[str, float], total: float, audio: float) -> dict:
    extra = {"rtf": total / audio if audio else float("nan")}
    if "text" in marks:
        extra["ttft_ms"] = (marks["text"] - started) * 1000
    if "audio" in marks:
        extra["ttfa_ms"] = (marks["audio"] - started) * 1000
    return extra


class GrpcClient(kit.ChannelClient):
    def __init__(self, target: str, loop: kit.Loop, tokens: int) -> None:
        from mmserve.omni.v1 import omni_pb2_grpc

        super().__init__(target, loop)
        self.tokens = tokens
        self.asked = itertools.count()
        self.stub = omni_pb2_grpc.OmniServiceStub(self.channel)

    async def one(self, _index: int) -> tuple[kit.Sample, float]:
        from mmserve.common.v1 import chat_pb2
        from mmserve.omni.v1 import omni_pb2

        part = omni_pb2.ContentPart(text=QUESTIONS[next(self.asked) % len(QUESTIONS)])
        request = omni_pb2.ChatRequest(
            messages=[omni_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=[part])],
            sampling=chat_pb2.SamplingParams(max_new_tokens=self.tokens, temperature=0.0),
            speech=omni_pb2.SpeechOptions(enabled=True, chunk_ms=CHUNK_MS),
        )
        marks: dict[str, float] = {}
        started = time.perf_counter()
        seconds, usage = 0.0, None
        async for event in self.stub.StreamChat(request, timeout=3600):
            kind = event.WhichOneof("event")
            if kind == "delta":
                marks.setdefault("text", time.perf_counter())
            elif kind == "audio":
                marks.setdefault("audio", time.perf_counter())
            elif kind == "completed":
                seconds, usage = event.completed.audio_seconds, event.completed.usage
        total = time.perf_counter() - started
        queue = usage.queue_seconds if usage is not None else None
        return kit.Sample(total, queue, 1, _extra(started, marks, total, seconds)), 1.0

    def measure(self, replies: int, clients: int) -> kit.Run:
        return self.run_closed_loop(self.one, replies, clients)


# ---- live sessions: a spoken turn, timed from the end of the user's speech ------------------

PUSH_CHUNK_MS = 100
LEAD_SECONDS = 0.3
TAIL_SECONDS = 1.5
SESSION_PARTS = ("vad_ms", "asr_ms", "ttft_ms", "ttfa_ms", "end_ms")


@functools.cache
def spoken(text: str) -> Any:
    """`text` spoken by the Piper voice, 16 kHz mono float32 (noise off: the same every run)."""
    import numpy as np

    from services.omni.audio import resample
    from services.omni.tts import PiperTts, TtsOptions

    voice = PiperTts(TtsOptions("auto", noise_scale=0.0, noise_w_scale=0.0))
    audio = np.concatenate(list(voice.synthesize(text)))
    return resample(audio, voice.sample_rate, 16000)


async def spoken_turn(
    stub: Any, question: str, tokens: int, heard: list[str] | None = None
) -> dict[str, float]:
    """One half-duplex session answering `question` spoken at real time: the parts in ms from
    the end of the user's speech (see the module's docstring); the transcripts go to `heard`."""
    import asyncio

    import numpy as np

    from mmserve.common.v1 import chat_pb2, media_pb2
    from mmserve.omni.v1 import omni_pb2
    from services.omni.audio import to_pcm16

    speech = spoken(question)
    silence = np.zeros(int(16000 * LEAD_SECONDS), dtype=np.float32)
    tail = np.zeros(int(16000 * TAIL_SECONDS), dtype=np.float32)
    pcm = to_pcm16(np.concatenate([silence, speech, tail]))
    step = 16000 * PUSH_CHUNK_MS // 1000 * 2
    opened = await stub.OpenSession(
        omni_pb2.OpenSessionRequest(
            mode=omni_pb2.SESSION_MODE_HALF_DUPLEX,
            sampling=chat_pb2.SamplingParams(max_new_tokens=tokens, temperature=0.0),
            speech=omni_pb2.SpeechOptions(enabled=True, chunk_ms=CHUNK_MS),
        ),
        timeout=60,
    )
    sid = opened.session_id
    marks: dict[str, float] = {}
    done = asyncio.Event()

    async def read() -> None:
        request = omni_pb2.StreamSessionEventsRequest(session_id=sid)
        async for event in stub.StreamSessionEvents(request):
            now = time.perf_counter()
            kind = event.WhichOneof("event")
            if kind == "state" and event.state.reason == "vad: speech ended":
                marks.setdefault("vad_ms", now)
            elif kind == "transcript":
                marks.setdefault("asr_ms", now)
                if heard is not None:
                    heard.append(event.transcript.text)
            elif kind == "delta":
                marks.setdefault("ttft_ms", now)
            elif kind == "audio":
                marks.setdefault("ttfa_ms", now)
            elif kind == "turn_completed":
                marks.setdefault("end_ms", now)
                done.set()
                return

    reader = asyncio.create_task(read())
    try:
        started = time.perf_counter()
        speech_end = started + (len(silence) + len(speech)) / 16000
        for index, offset in enumerate(range(0, len(pcm), step)):
            # A microphone delivers a chunk once its last sample is captured.
            await asyncio.sleep(
                max(0.0, started + (index + 1) * PUSH_CHUNK_MS / 1000 - time.perf_counter())
            )
            await stub.PushSessionInput(
                omni_pb2.PushSessionInputRequest(
                    session_id=sid,
                    sequence=index,
                    audio=media_pb2.Audio(
                        data=pcm[offset : offset + step],
                        format=media_pb2.AUDIO_FORMAT_PCM_S16LE,
                        sample_rate_hz=16000,
                    ),
                ),
                timeout=30,
            )
            if done.is_set():
                break
        await asyncio.wait_for(done.wait(), 300)
    finally:
        reader.cancel()
        await stub.CloseSession(omni_pb2.CloseSessionRequest(session_id=sid), timeout=30)
    return {name: (at - speech_end) * 1000 for name, at in marks.items()}


class SessionClient(kit.ChannelClient):
    """Spoken turns in half-duplex sessions, one session per question."""

    def __init__(self, target: str, loop: kit.Loop, tokens: int) -> None:
        from mmserve.omni.v1 import omni_pb2_grpc

        super().__init__(target, loop)
        self.tokens = tokens
        self.asked = itertools.count()
        self.stub = omni_pb2_grpc.OmniServiceStub(self.channel)

    async def one(self, _index: int) -> tuple[kit.Sample, float]:
        question = QUESTIONS[next(self.asked) % len(QUESTIONS)]
        parts = await spoken_turn(self.stub, question, self.tokens)
        return kit.Sample(parts.get("end_ms", float("nan")) / 1000, extra=parts), 1.0

    def measure(self, turns: int) -> kit.Run:
        return self.run_closed_loop(self.one, turns, 1)


def session_latency(argv: Sequence[str]) -> int:
    """`--session-latency [--turns N] [--target HOST:PORT] [--server-args ARGS] [--compare
    ARGS]`: the parts of spoken turns. With --compare, a second server started with those
    flags takes every other turn (paired rounds under the same load), each side reported."""
    import argparse
    import asyncio
    import os
    import shlex

    import grpc

    from mmserve.omni.v1 import omni_pb2_grpc

    parser = argparse.ArgumentParser(prog="omni_bench.py --session-latency")
    parser.add_argument("--session-latency", action="store_true")
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--target", default="")
    parser.add_argument("--server-args", default="", help="flags of the started server")
    parser.add_argument("--compare", default=None, help="flags of a second, compared server")
    args = parser.parse_args(argv)
    servers: list[Any] = []
    targets = {"": args.target} if args.target else {}

    def start(flags: str) -> str:
        data_dir = tempfile.mkdtemp(prefix="omni-bench-")
        server = kit.start_served(
            "omni", ["--data-dir", data_dir, *shlex.split(flags)], envoy=False
        )
        servers.append(server)
        return str(server.targets()[kit.SERVED])

    async def measure() -> dict[str, list[dict[str, float]]]:
        stubs = {}
        channels = []
        for label, target in targets.items():
            channels.append(grpc.aio.insecure_channel(target))
            stubs[label] = omni_pb2_grpc.OmniServiceStub(channels[-1])
        try:
            results: dict[str, list[dict[str, float]]] = {label: [] for label in stubs}
            for stub in stubs.values():
                await spoken_turn(stub, QUESTIONS[0], args.tokens)  # warm-up, not counted
            for i in range(args.turns):
                # Alternating sides each round, so neither always goes first.
                order = list(stubs.items()) if i % 2 == 0 else list(reversed(stubs.items()))
                for label, stub in order:
                    question = QUESTIONS[i % len(QUESTIONS)]
                    results[label].append(await spoken_turn(stub, question, args.tokens))
            return results
        finally:
            for channel in channels:
                await channel.close()

    try:
        if not targets:
            targets[args.server_args or "default flags"] = start(args.server_args)
            if args.compare is not None:
                targets[args.compare or "default flags"] = start(args.compare)
        before = os.getloadavg()
        results = asyncio.run(measure())
        after = os.getloadavg()
    finally:
        for server in servers:
            server.stop()
    load = f"load average {before[0]:.2f} before, {after[0]:.2f} after (1 min; noisy)"
    for label, turns in results.items():
        side = f" [{label}]" if label else ""
        print(f"{len(turns)} spoken turns{side}, ms after the end of the user's speech, {load}:")
        print_parts(turns)
    return 0


def print_parts(turns: Sequence[dict[str, float]]) -> None:
    import statistics

    for name in SESSION_PARTS:
        values = sorted(t[name] for t in turns if name in t)
        if values:
            p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
            print(f"  {name:8} p50 {statistics.median(values):7.0f}  p90 {p90:7.0f}")


def benchmark(
    plan: kit.Plan, log: Callable[[str], None] = print
) -> tuple[list[kit.Cell], list[str]]:
    tokens = plan.sizes["omni_tokens"]
    # Per client and run: every question (the same set in every run, so runs compare), one in
    # a smoke run.
    replies = 1 if plan.profile == "tiny" else len(QUESTIONS)
    notes = [
        f"omni: {replies} question(s) per client and run, the same in every run, greedy, at "
        f"most {tokens} new tokens, speech on ({CHUNK_MS} ms chunks); throughput in replies/s"
    ]
    with kit.teardown() as (loop, closers):
        log("omni: loading the in-process engine and starting the server")
        local = InProcess(plan, model_flags(plan), tokens)
        closers.append(local.close)
        data_dir = tempfile.mkdtemp(prefix="omni-bench-")
        server = kit.start_served(
            "omni", ["--data-dir", data_dir, *model_flags(plan)], envoy=plan.envoy
        )
        closers.append(server.stop)
        clients = {p: GrpcClient(t, loop, tokens) for p, t in server.targets().items()}
        closers += [c.close for c in clients.values()]
        specs: list[kit.CellSpec] = []
        native: list[kit.CellSpec] = []
        if plan.profile != "tiny":
            notes.append(
                f"omni native speech: tiny Qwen3-Omni (random weights), {NATIVE_FRAMES} talker "
                f"frames per reply, at most {NATIVE_TOKENS} new text tokens, one reply per run; "
                "whole-reply vocoder vs native_speech_chunk_codes"
            )
            native = _native_specs(plan, loop, closers, log)
        for n in plan.concurrency["omni"]:
            specs.append(
                kit.CellSpec(
                    kit.Cell("omni", kit.IN_PROCESS, n, "reply"),
                    lambda n=n: local.measure(replies * n),
                    lambda: local.measure(1),
                )
            )
            for path, client in plan.paths_at("omni", n, clients).items():
                specs.append(
                    kit.CellSpec(
                        kit.Cell("omni", path, n, "reply", "StreamChat"),
                        lambda n=n, client=client: client.measure(replies * n, n),
                        lambda client=client: client.measure(1, 1),
                    )
                )
        notes.append(
            "omni spoken turn: a Piper-spoken question pushed at real time into a half-duplex "
            "session, parts in ms from the end of speech (vad_ms, asr_ms, ttft_ms, ttfa_ms; "
            "latency = the turn's end)"
        )
        sessions = {p: SessionClient(t, loop, tokens) for p, t in server.targets().items()}
        closers += [c.close for c in sessions.values()]
        for path, client in plan.paths_at("omni", 1, sessions).items():
            specs.append(
                kit.CellSpec(
                    kit.Cell("omni", path, 1, "reply", "spoken turn, half duplex"),
                    lambda client=client: client.measure(replies),
                    lambda client=client: client.measure(1),
                )
            )
        order = {kit.IN_PROCESS: 0, kit.SERVED: 1, kit.ENVOY: 2}
        specs.sort(key=lambda s: (s.cell.concurrency, order[s.cell.path]))
        cells = kit.measure_rounds(specs + native, plan.repeats_for("omni"), log)
    return cells, notes


def _native_specs(
    plan: kit.Plan, loop: kit.Loop, closers: list[Callable[[], None]], log: Callable[[str], None]
) -> list[kit.CellSpec]:
    """In-process and served cells of the tiny Qwen3-Omni, one pair per vocoder setting."""
    specs: list[kit.CellSpec] = []
    for variant, chunk in NATIVE_VARIANTS.items():
        log(f"omni: {variant}")
        flags = native_flags(plan, chunk)
        local = InProcess(plan, flags, NATIVE_TOKENS)
        closers.append(local.close)
        server = kit.start_served(
            "omni", ["--data-dir", tempfile.mkdtemp(prefix="omni-bench-"), *flags], envoy=False
        )
        closers.append(server.stop)
        client = GrpcClient(server.targets()[kit.SERVED], loop, NATIVE_TOKENS)
        closers.append(client.close)
        specs.append(
            kit.CellSpec(
                kit.Cell("omni", kit.IN_PROCESS, 1, "reply", variant),
                lambda local=local: local.measure(1),
                lambda local=local: local.measure(1),
            )
        )
        specs.append(
            kit.CellSpec(
                kit.Cell("omni", kit.SERVED, 1, "reply", variant),
                lambda client=client: client.measure(1, 1),
                lambda client=client: client.measure(1, 1),
            )
        )
    return specs


if __name__ == "__main__":
    if "--session-latency" in sys.argv:
        sys.exit(session_latency(sys.argv[1:]))
    sys.exit(kit.script_main("omni"))
