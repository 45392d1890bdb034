"""Reference voices: registered from a short sample with format, duration and size limits,
listed after the built-in speakers, kept across a server restart, deleted; a family that cannot
clone (Piper) refuses them with FAILED_PRECONDITION. The registry file is replaced atomically."""

from __future__ import annotations

import asyncio
import json
import signal

import grpc
import numpy as np
import pytest

from mmserve.common.v1 import chat_pb2, media_pb2
from mmserve.omni.v1 import omni_pb2, omni_pb2_grpc
from services.omni import voices as voices_module
from services.omni.voices import REGISTRY_FILE, VoiceRegistry
from tests.omni.support import (
    EventLog,
    is_state,
    silence,
    speech,
    start_omni,
    text_part,
    user,
    wav,
)
from tests.support.rpc import field_violations

SAMPLE = np.concatenate([speech("The quick brown fox jumps over the lazy dog."), silence(1.0)])


def register(name: str, data: bytes, fmt: int = media_pb2.AUDIO_FORMAT_UNSPECIFIED):
    return omni_pb2.RegisterVoiceRequest(
        name=name, sample=media_pb2.Audio(data=data, format=fmt), transcript="The quick brown fox"
    )


async def test_voices_register_list_survive_restart_and_delete(tmp_path):
    folder = tmp_path / "omni-voices"
    server = start_omni(folder)
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = omni_pb2_grpc.OmniServiceStub(channel)
            made = await stub.RegisterVoice(register("Narrator", wav(SAMPLE)), timeout=30)
            voice = made.voice
            assert voice.voice_id.startswith("voice-")
            assert voice.registered
            assert voice.sample_seconds == pytest.approx(len(SAMPLE) / 16000, abs=0.01)
            listed = await stub.ListVoices(omni_pb2.ListVoicesRequest())
            assert [(v.voice_id, v.registered) for v in listed.voices] == [
                ("joe", False),
                (voice.voice_id, True),
            ]

            for request, field in [
                (register("Short", wav(silence(1.0))), "sample"),
                (register("", wav(SAMPLE)), "name"),
                (register("x" * 65, wav(SAMPLE)), "name"),
                (register("Ogg", b"OggS" + b"\x00" * 100), "sample.format"),
                (
                    register("Raw", b"\x00\x00" * 100, media_pb2.AUDIO_FORMAT_PCM_S16LE),
                    "sample.sample_rate_hz",
                ),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.RegisterVoice(request, timeout=30)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert field_violations(caught.value) == [field]

            # Piper cannot clone: the registered voice is refused where it would be used.
            chat = omni_pb2.ChatRequest(
                messages=[user(text_part("hi"))],
                sampling=chat_pb2.SamplingParams(max_new_tokens=4),
                speech=omni_pb2.SpeechOptions(enabled=True, voice=voice.voice_id),
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Chat(chat, timeout=30)
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

            for voice_id, code in [
                ("joe", grpc.StatusCode.FAILED_PRECONDITION),
                ("voice-00000000-0000-4000-8000-000000000000", grpc.StatusCode.NOT_FOUND),
                ("", grpc.StatusCode.INVALID_ARGUMENT),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.DeleteVoice(omni_pb2.DeleteVoiceRequest(voice_id=voice_id))
                assert caught.value.code() == code
    finally:
        server.stop()

    server = start_omni(folder)  # same data dir
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = omni_pb2_grpc.OmniServiceStub(channel)
            listed = await stub.ListVoices(omni_pb2.ListVoicesRequest())
            assert [v.name for v in listed.voices if v.registered] == ["Narrator"]
            await stub.DeleteVoice(omni_pb2.DeleteVoiceRequest(voice_id=voice.voice_id))
            listed = await stub.ListVoices(omni_pb2.ListVoicesRequest())
            assert [v.voice_id for v in listed.voices] == ["joe"]

            # SIGTERM with a live session: the session ends ("server draining"), exit 0.
            opened = await stub.OpenSession(omni_pb2.OpenSessionRequest(), timeout=30)
            log = EventLog(stub, opened.session_id)
            await log.wait(is_state(omni_pb2.SESSION_STATE_LISTENING, "session started"), 30)
            server.terminate(signal.SIGTERM)
            await log.wait(is_state(omni_pb2.SESSION_STATE_CLOSED, "server draining"), 30)
            assert await asyncio.to_thread(server.wait, 60) == 0
    finally:
        server.stop()
    assert not list((folder / "data" / "voices").glob("voice-*.wav"))


def test_a_crash_while_writing_never_corrupts_the_registry(tmp_path, monkeypatch):
    registry = VoiceRegistry(tmp_path, max_voices=10)
    registry.load()
    kept = registry.register("Kept", SAMPLE)
    before = (tmp_path / REGISTRY_FILE).read_bytes()

    def crash(src, dst):  # the process dies between writing the new file and renaming it
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(voices_module.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        registry.register("Lost", SAMPLE)
    monkeypatch.undo()

    assert (tmp_path / REGISTRY_FILE).read_bytes() == before
    reloaded = VoiceRegistry(tmp_path, max_voices=10)
    reloaded.load()
    assert [v.voice_id for v in reloaded.list()] == [kept.voice_id]
    assert json.loads(before)["voices"][0]["name"] == "Kept"
    assert not list(tmp_path.glob(".*.tmp"))
    assert sorted(p.name for p in tmp_path.glob("voice-*.wav")) == [kept.sample_file]
    assert len(reloaded.sample(kept.voice_id)) == len(SAMPLE)
