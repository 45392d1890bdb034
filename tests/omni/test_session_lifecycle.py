"""Sessions whose client goes away, and recordings read back, through a real server: a client
process SIGKILLed mid-reply leaves an orphaned session that is closed within the orphan timeout
(a Chat queued behind its turn starts within that bound); ListRecordings and GetRecording give
back what a recorded session heard and said."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import wave
from io import BytesIO

import grpc
import pytest

from mmserve.common.v1 import chat_pb2
from mmserve.omni.v1 import omni_pb2, omni_pb2_grpc
from tests.omni.support import EventLog, is_state, start_omni, turn_done

ORPHAN_SECONDS = 3.0
CLOSED = omni_pb2.SESSION_STATE_CLOSED

# A client that opens a session, reads its events, asks for a long reply and then hangs: the
# test kills it with SIGKILL once the reply streams (no CloseSession, no clean disconnect).
CLIENT = textwrap.dedent(
    """
    import sys, threading, time
    import grpc
    from mmserve.common.v1 import chat_pb2
    from mmserve.omni.v1 import omni_pb2, omni_pb2_grpc

    channel = grpc.insecure_channel(sys.argv[1])
    stub = omni_pb2_grpc.OmniServiceStub(channel)
    opened = stub.OpenSession(omni_pb2.OpenSessionRequest(
        mode=omni_pb2.SESSION_MODE_CHAT,
        sampling=chat_pb2.SamplingParams(max_new_tokens=400),
        speech=omni_pb2.SpeechOptions(enabled=True),
    ), timeout=30)
    print(opened.session_id, flush=True)
    events = stub.StreamSessionEvents(
        omni_pb2.StreamSessionEventsRequest(session_id=opened.session_id))
    stub.PushSessionInput(omni_pb2.PushSessionInputRequest(
        session_id=opened.session_id, sequence=0,
        text="Tell me a long story about a dragon and a knight.", end_of_turn=True), timeout=30)
    for event in events:
        if event.WhichOneof("event") == "delta":
            print("replying", flush=True)
            break
    time.sleep(3600)
    """
)


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_folder):
    process = start_omni(
        tmp_path_factory.mktemp("omni-lifecycle"),
        [
            "--session-orphan-timeout-seconds",
            str(ORPHAN_SECONDS),
            "--recordings-enabled",
            "--heartbeat-seconds",
            "1",
        ],
    )
    yield process
    process.stop()


@pytest.fixture
async def stub(server):
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield omni_pb2_grpc.OmniServiceStub(channel)


def hello_chat() -> omni_pb2.ChatRequest:
    return omni_pb2.ChatRequest(
        messages=[
            omni_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=[omni_pb2.ContentPart(text="Hi")])
        ],
        sampling=chat_pb2.SamplingParams(max_new_tokens=4),
    )


async def test_a_killed_client_frees_its_session_within_the_orphan_timeout(server, stub):
    client = subprocess.Popen(  # noqa: ASYNC220 (started once, read through a thread)
        [sys.executable, "-c", CLIENT, server.target],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert client.stdout is not None
        session_id = (await asyncio.to_thread(client.stdout.readline)).strip()
        assert session_id
        line = await asyncio.wait_for(asyncio.to_thread(client.stdout.readline), 120)
        assert line.strip() == "replying"
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait(10)
    killed = time.monotonic()

    async def closed_after() -> float:
        # ResumeSession on a listening session changes nothing: a probe that is no input.
        while True:
            try:
                await stub.ResumeSession(
                    omni_pb2.ResumeSessionRequest(session_id=session_id), timeout=10
                )
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                return time.monotonic() - killed
            await asyncio.sleep(0.1)

    probe = asyncio.create_task(closed_after())
    # The orphaned session's turn still runs; the Chat waits until the session is released
    # (orphan timeout, watchdog) and its turn stops (at the next token or spoken clause).
    reply = await stub.Chat(hello_chat(), timeout=120)
    released = await asyncio.wait_for(probe, 60)
    waited = reply.usage.queue_seconds
    print(
        f"\nclient killed mid-reply: session closed after {released:.2f}s, the next Chat "
        f"started after {waited:.2f}s (orphan timeout {ORPHAN_SECONDS}s)"
    )
    assert released <= ORPHAN_SECONDS + 1.5
    assert waited <= ORPHAN_SECONDS + 5.0  # generous: a spoken clause may be mid-synthesis
    late = [
        e
        async for e in stub.StreamSessionEvents(
            omni_pb2.StreamSessionEventsRequest(session_id=session_id), timeout=10
        )
    ]
    assert [(e.state.state, e.state.reason) for e in late] == [
        (CLOSED, "orphaned: no reader and no input")
    ]


async def test_a_listening_session_without_a_reader_is_released(stub):
    opened = await stub.OpenSession(
        omni_pb2.OpenSessionRequest(mode=omni_pb2.SESSION_MODE_HALF_DUPLEX), timeout=30
    )
    assert opened.orphan_timeout_seconds == ORPHAN_SECONDS
    # A Chat is served at once meanwhile: a listening session holds no device.
    reply = await stub.Chat(hello_chat(), timeout=60)
    assert reply.usage.queue_seconds < 2.0
    await asyncio.sleep(ORPHAN_SECONDS + 1.0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PauseSession(omni_pb2.PauseSessionRequest(session_id=opened.session_id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "orphaned" in caught.value.details()


async def test_a_reader_keeps_a_quiet_session_open(stub):
    opened = await stub.OpenSession(
        omni_pb2.OpenSessionRequest(mode=omni_pb2.SESSION_MODE_CHAT), timeout=30
    )
    log = EventLog(stub, opened.session_id)
    try:
        await asyncio.sleep(ORPHAN_SECONDS + 1.0)
        assert not any(is_state(CLOSED)(e) for e in log.events)
    finally:
        await stub.CloseSession(omni_pb2.CloseSessionRequest(session_id=opened.session_id))
    await log.ended(timeout=10)


async def test_model_info_says_no_mode_holds_the_device(stub):
    info = await stub.GetModelInfo(omni_pb2.GetModelInfoRequest(), timeout=10)
    assert omni_pb2.SESSION_MODE_HALF_DUPLEX in info.session_modes
    assert list(info.device_holding_session_modes) == []


async def read_all(stub, session_id: str, file: int, max_bytes: int = 0) -> bytes:
    data, offset = b"", 0
    while True:
        piece = await stub.GetRecording(
            omni_pb2.GetRecordingRequest(
                session_id=session_id, file=file, offset=offset, max_bytes=max_bytes
            ),
            timeout=10,
        )
        data += piece.data
        wav = file in (omni_pb2.RECORDING_FILE_INPUT_AUDIO, omni_pb2.RECORDING_FILE_OUTPUT_AUDIO)
        assert (piece.format == omni_pb2.RECORDING_FORMAT_WAV) == wav
        if piece.eof:
            assert piece.total_bytes == len(data)
            return data
        offset = piece.next_offset


async def test_recordings_are_listed_and_read_back(stub):
    opened = await stub.OpenSession(
        omni_pb2.OpenSessionRequest(
            mode=omni_pb2.SESSION_MODE_CHAT,
            record=True,
            sampling=chat_pb2.SamplingParams(max_new_tokens=12),
            speech=omni_pb2.SpeechOptions(enabled=True),
        ),
        timeout=30,
    )
    sid = opened.session_id
    log = EventLog(stub, sid)
    try:
        await stub.PushSessionInput(
            omni_pb2.PushSessionInputRequest(
                session_id=sid, sequence=0, text="What is the capital of France?", end_of_turn=True
            )
        )
        await log.wait(turn_done(0), timeout=90)
        listed = await stub.ListRecordings(omni_pb2.ListRecordingsRequest(), timeout=10)
        mine = [r for r in listed.recordings if r.session_id == sid]
        assert len(mine) == 1
        assert mine[0].active
    finally:
        closed = await stub.CloseSession(omni_pb2.CloseSessionRequest(session_id=sid))
    assert closed.recording_path == f"recordings/{sid}"
    listed = await stub.ListRecordings(omni_pb2.ListRecordingsRequest(), timeout=10)
    (recording,) = [r for r in listed.recordings if r.session_id == sid]
    assert not recording.active
    assert recording.ended >= recording.started > 0
    assert recording.mode == omni_pb2.SESSION_MODE_CHAT
    assert recording.turns == 1
    assert recording.output_seconds > 0.2
    assert recording.path == closed.recording_path

    speech = await read_all(stub, sid, omni_pb2.RECORDING_FILE_OUTPUT_AUDIO, max_bytes=4096)
    with wave.open(BytesIO(speech)) as reader:
        assert reader.getframerate() == opened.output_sample_rate_hz
        assert abs(reader.getnframes() / reader.getframerate() - recording.output_seconds) < 0.01
    lines = (await read_all(stub, sid, omni_pb2.RECORDING_FILE_TRANSCRIPT)).decode().splitlines()
    roles = [json.loads(line)["role"] for line in lines]
    assert roles == ["user", "assistant"]
    assert json.loads(lines[0])["text"] == "What is the capital of France?"
    meta = json.loads(await read_all(stub, sid, omni_pb2.RECORDING_FILE_META))
    assert meta["turns"] == 1
    assert meta["mode"] == "chat"
    heard = await read_all(stub, sid, omni_pb2.RECORDING_FILE_INPUT_AUDIO)
    assert heard[:4] == b"RIFF"

    bad = [
        (omni_pb2.GetRecordingRequest(session_id=""), grpc.StatusCode.INVALID_ARGUMENT),
        (omni_pb2.GetRecordingRequest(session_id="../x"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            omni_pb2.GetRecordingRequest(session_id=sid, max_bytes=8 * 1024 * 1024),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            omni_pb2.GetRecordingRequest(session_id="00000000-0000-4000-8000-000000000000"),
            grpc.StatusCode.NOT_FOUND,
        ),
    ]
    for request, code in bad:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetRecording(request, timeout=10)
        assert caught.value.code() == code, request


async def test_sdk_and_cli_get_recordings(server, stub, tmp_path):
    from mmserve_client import OmniClient
    from tests.clients.helpers import run_cli

    opened = await stub.OpenSession(
        omni_pb2.OpenSessionRequest(
            mode=omni_pb2.SESSION_MODE_CHAT,
            record=True,
            sampling=chat_pb2.SamplingParams(max_new_tokens=8),
            speech=omni_pb2.SpeechOptions(enabled=True),
        ),
        timeout=30,
    )
    sid = opened.session_id
    log = EventLog(stub, sid)
    await stub.PushSessionInput(
        omni_pb2.PushSessionInputRequest(
            session_id=sid, sequence=0, text="Say hello.", end_of_turn=True
        )
    )
    await log.wait(turn_done(0), timeout=90)
    await stub.CloseSession(omni_pb2.CloseSessionRequest(session_id=sid))

    def sdk() -> tuple[list, bytes, bytes]:
        with OmniClient(server.target) as client:
            found = client.list_recordings()
            first = client.read_recording(sid, "output", max_bytes=100)
            return found, first.data, client.download_recording(sid, "output")

    found, head, speech = await asyncio.to_thread(sdk)
    (recording,) = [r for r in found if r.session_id == sid]
    assert recording.mode == "chat"
    assert recording.turns == 1
    assert head == speech[:100]
    assert speech[:4] == b"RIFF"

    listed = await asyncio.to_thread(run_cli, "recordings", "--target", server.target, "--json")
    assert listed.code == 0, listed.stderr
    assert sid in [r["session_id"] for r in json.loads(listed.stdout)]
    target = tmp_path / "speech.wav"
    got = await asyncio.to_thread(
        run_cli, "recording", sid, "--file", "output", "-o", str(target), "--target", server.target
    )
    assert got.code == 0, got.stderr
    assert target.read_bytes() == speech
    missing = await asyncio.to_thread(
        run_cli, "recording", "00000000-0000-4000-8000-000000000000", "--target", server.target
    )
    assert missing.code == 10 + grpc.StatusCode.NOT_FOUND.value[0]
