"""Helpers for the omni tests: real servers as subprocesses, speech made with the Piper voice
(so VAD and Whisper hear real speech), and bounded waits on session events."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mmserve.common.v1 import chat_pb2, media_pb2
from mmserve.omni.v1 import omni_pb2, omni_pb2_grpc
from services.omni.audio import resample, to_pcm16, wav_bytes
from services.omni.tts import PiperTts, TtsOptions
from tests.support.servers import ServerProcess, start_process

SERVICE = "mmserve.omni.v1.OmniService"
# Repeatable speech: Piper without its noise gives the same samples on every run.
QUIET_PIPER = ["--tts-noise-scale", "0", "--tts-noise-w-scale", "0"]


def start_omni(folder: Path, argv: Sequence[str] = (), timeout: float = 300) -> ServerProcess:
    """`python -m services.omni` on a free port, waited on until SERVING (bounded)."""
    folder.mkdir(parents=True, exist_ok=True)
    args = ["--data-dir", str(folder / "data"), "--log-level", "INFO", *QUIET_PIPER, *argv]
    server = start_process("services.omni", args, folder / "server.log")
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"omni server exited:\n{server.log()[-4000:]}")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return server
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    server.stop()
    raise TimeoutError(f"omni server not SERVING in {timeout}s:\n{server.log()[-4000:]}")


@functools.cache
def piper() -> PiperTts:
    return PiperTts(TtsOptions("auto", noise_scale=0.0, noise_w_scale=0.0))


@functools.cache
def speech(text: str) -> np.ndarray:
    """`text` spoken by the Piper voice, as 16 kHz mono float32."""
    voice = piper()
    audio = np.concatenate(list(voice.synthesize(text)))
    return resample(audio, voice.sample_rate, 16000)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(16000 * seconds), dtype=np.float32)


def wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    return wav_bytes(to_pcm16(samples), rate)


def pcm_chunks(samples: np.ndarray, chunk_ms: int = 100) -> list[bytes]:
    data = to_pcm16(samples)
    size = 16000 * chunk_ms // 1000 * 2
    return [data[i : i + size] for i in range(0, len(data), size)]


def user(*parts: omni_pb2.ContentPart) -> omni_pb2.ChatMessage:
    return omni_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=list(parts))


def text_part(text: str) -> omni_pb2.ContentPart:
    return omni_pb2.ContentPart(text=text)


def audio_part(
    data: bytes, fmt: int = media_pb2.AUDIO_FORMAT_UNSPECIFIED, **kw: int
) -> omni_pb2.ContentPart:
    return omni_pb2.ContentPart(audio=media_pb2.Audio(data=data, format=fmt, **kw))


def words(text: str) -> list[str]:
    return "".join(c.lower() if c.isalnum() or c.isspace() else " " for c in text).split()


class EventLog:
    """Reads a session's event stream in the background; tests wait on it with a timeout."""

    def __init__(self, stub: omni_pb2_grpc.OmniServiceStub, session_id: str) -> None:
        self.events: list[omni_pb2.StreamSessionEventsResponse] = []
        self._changed = asyncio.Event()
        self._call = stub.StreamSessionEvents(
            omni_pb2.StreamSessionEventsRequest(session_id=session_id)
        )
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for event in self._call:
            self.events.append(event)
            self._changed.set()

    def kinds(self) -> list[str]:
        return [e.WhichOneof("event") for e in self.events]

    async def wait(
        self, predicate: Callable[[omni_pb2.StreamSessionEventsResponse], bool], timeout: float
    ) -> omni_pb2.StreamSessionEventsResponse:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if predicate(event):
                    return event
            seen = len(self.events)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.task.done():
                raise TimeoutError(f"event not seen; got {self.kinds()}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def ended(self, timeout: float) -> None:
        await asyncio.wait_for(asyncio.shield(self.task), timeout)

    def cancel(self) -> None:
        self._call.cancel()
        self.task.cancel()


def is_state(
    state: int, reason: str | None = None
) -> Callable[[omni_pb2.StreamSessionEventsResponse], bool]:
    def check(event: omni_pb2.StreamSessionEventsResponse) -> bool:
        return (
            event.WhichOneof("event") == "state"
            and event.state.state == state
            and (reason is None or event.state.reason == reason)
        )

    return check


def turn_done(turn: int) -> Callable[[omni_pb2.StreamSessionEventsResponse], bool]:
    return lambda e: e.WhichOneof("event") == "turn_completed" and e.turn_completed.turn == turn


async def push_audio(
    stub: omni_pb2_grpc.OmniServiceStub,
    session_id: str,
    samples: np.ndarray,
    first_sequence: int,
    chunk_ms: int = 100,
) -> int:
    """Pushes PCM chunks (a little faster than real time); returns the next sequence number."""
    sequence = first_sequence
    for chunk in pcm_chunks(samples, chunk_ms):
        await stub.PushSessionInput(
            omni_pb2.PushSessionInputRequest(
                session_id=session_id,
                sequence=sequence,
                audio=media_pb2.Audio(
                    data=chunk, format=media_pb2.AUDIO_FORMAT_PCM_S16LE, sample_rate_hz=16000
                ),
            ),
            timeout=10,
        )
        sequence += 1
        await asyncio.sleep(chunk_ms / 4000)
    return sequence
