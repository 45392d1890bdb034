"""Live sessions through a real server: half-duplex turns over pushed Piper speech (Silero VAD,
Whisper, SmolLM2, Piper), context across turns, barge-in in audio duplex, sessions and Chat calls
sharing the device between turns (a waiting turn reports its place), pause timeout, max sessions
and the error codes of the session calls."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from mmserve.common.v1 import chat_pb2, media_pb2
from mmserve.omni.v1 import omni_pb2, omni_pb2_grpc
from tests.omni.support import (
    EventLog,
    is_state,
    push_audio,
    silence,
    speech,
    start_omni,
    turn_done,
    wav,
)
from tests.support.rpc import field_violations, retry_info

LISTENING = omni_pb2.SESSION_STATE_LISTENING
RESPONDING = omni_pb2.SESSION_STATE_RESPONDING
PAUSED = omni_pb2.SESSION_STATE_PAUSED
CLOSED = omni_pb2.SESSION_STATE_CLOSED


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_folder):
    process = start_omni(
        tmp_path_factory.mktemp("omni-sessions"),
        [
            "--max-sessions",
            "2",
            "--session-pause-timeout-seconds",
            "1.5",
            "--vad-min-silence-ms",
            "500",
            "--session-max-chunk-ms",
            "1000",
            "--heartbeat-seconds",
            "1",
            "--session-idle-timeout-seconds",
            "3",
        ],
    )
    yield process
    process.stop()


@pytest.fixture
async def stub(server):
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield omni_pb2_grpc.OmniServiceStub(channel)


async def open_session(stub, mode, speech_on=True, max_new_tokens=16, **extra):
    return await stub.OpenSession(
        omni_pb2.OpenSessionRequest(
            mode=mode,
            sampling=chat_pb2.SamplingParams(max_new_tokens=max_new_tokens),
            speech=omni_pb2.SpeechOptions(enabled=speech_on),
            **extra,
        ),
        timeout=30,
    )


async def close(stub, session_id):
    return await stub.CloseSession(omni_pb2.CloseSessionRequest(session_id=session_id), timeout=30)


def spoken_turn(text: str) -> np.ndarray:
    return np.concatenate([silence(0.4), speech(text), silence(1.0)])


def turn_events(log: EventLog, turn: int) -> list[str]:
    """The kinds of one turn's events, with state changes named by their reason."""
    names = []
    for event in log.events:
        if event.turn != turn:
            continue
        kind = event.WhichOneof("event")
        if kind in ("heartbeat", "queue"):
            continue
        names.append(f"state:{event.state.reason}" if kind == "state" else kind)
    return names


def squeeze(names: list[str]) -> list[str]:
    """Runs of the same kind collapsed, so the order of kinds is easy to compare."""
    return [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]


async def test_half_duplex_two_spoken_turns_keep_context(stub):
    # Speech is made before the session opens: the session's idle clock starts at open.
    turns = [spoken_turn("What is the capital of France?"), spoken_turn("And of Germany?")]
    opened = await open_session(stub, omni_pb2.SESSION_MODE_HALF_DUPLEX)
    assert opened.output_sample_rate_hz == 22050
    log = EventLog(stub, opened.session_id)
    try:
        sequence = await push_audio(stub, opened.session_id, turns[0], 0)
        first = await log.wait(turn_done(0), timeout=90)
        sequence = await push_audio(stub, opened.session_id, turns[1], sequence)
        second = await log.wait(turn_done(1), timeout=90)
        await log.wait(is_state(LISTENING, "turn completed"), timeout=10)
    finally:
        closed = await close(stub, opened.session_id)
    await log.ended(timeout=10)
    assert closed.turns == 2

    for turn in (0, 1):
        names = squeeze(turn_events(log, turn))
        start = names.index("state:vad: speech started")
        head = names[start : start + 4]
        assert head == [
            "state:vad: speech started",
            "state:vad: speech ended",
            "transcript",
            "state:replying",
        ]
        body = names[start + 4 : names.index("turn_completed")]
        assert body[0] == "delta"
        assert "audio" in body
        assert set(body) == {"delta", "audio"}
        assert names[names.index("turn_completed") + 1 :] in ([], ["state:turn completed"])
    transcripts = [e.transcript for e in log.events if e.WhichOneof("event") == "transcript"]
    assert transcripts[0].text == "What is the capital of France?"
    assert transcripts[0].is_final
    replies = [
        "".join(e.delta.text for e in log.events if e.turn == t and e.delta.text) for t in (0, 1)
    ]
    assert "Paris" in replies[0]
    assert replies[1]
    audio = [e.audio for e in log.events if e.WhichOneof("event") == "audio"]
    assert {a.audio.sample_rate_hz for a in audio} == {22050}
    assert first.turn_completed.finish_reason == chat_pb2.FINISH_REASON_STOP
    # Turn 1's prompt holds turn 0 (question and answer) as context.
    usage0, usage1 = first.turn_completed.usage, second.turn_completed.usage
    assert usage1.input_tokens > usage0.input_tokens + usage0.output_tokens
    assert log.events[-1].state.state == CLOSED
    assert log.events[-1].state.reason == "closed by client"


async def test_audio_duplex_barge_in_interrupts_the_reply(stub):
    question = spoken_turn("Tell me a long story about the sea.")
    interruption = spoken_turn("What is the capital of France?")
    opened = await open_session(stub, omni_pb2.SESSION_MODE_AUDIO_DUPLEX, max_new_tokens=48)
    log = EventLog(stub, opened.session_id)
    try:
        sequence = await push_audio(stub, opened.session_id, question, 0)
        await log.wait(lambda e: e.WhichOneof("event") == "audio", timeout=90)
        # The user talks over the model's speech: the reply stops, the new words are heard.
        await push_audio(stub, opened.session_id, interruption, sequence)
        interrupted = await log.wait(turn_done(0), timeout=60)
        await log.wait(is_state(LISTENING, "barge-in"), timeout=10)
        await log.wait(turn_done(1), timeout=90)
    finally:
        await close(stub, opened.session_id)
    assert interrupted.turn_completed.finish_reason == chat_pb2.FINISH_REASON_CANCELLED
    transcripts = [e.transcript.text for e in log.events if e.WhichOneof("event") == "transcript"]
    assert transcripts[-1] == "What is the capital of France?"


async def push_text(stub, session_id, sequence, text):
    await stub.PushSessionInput(
        omni_pb2.PushSessionInputRequest(
            session_id=session_id, sequence=sequence, text=text, end_of_turn=True
        ),
        timeout=30,
    )


async def test_sessions_and_chat_calls_share_the_device_between_turns(stub):
    first = await open_session(stub, omni_pb2.SESSION_MODE_CHAT, speech_on=False)
    second = await open_session(stub, omni_pb2.SESSION_MODE_CHAT, speech_on=False)
    logs = [EventLog(stub, first.session_id), EventLog(stub, second.session_id)]
    try:
        # Both sessions listen at once: neither waits for the other to end.
        for log in logs:
            await log.wait(is_state(LISTENING, "session started"), timeout=10)
        # A Chat call while both listen runs at once (nothing holds the device).
        reply = await stub.Chat(
            omni_pb2.ChatRequest(
                messages=[
                    omni_pb2.ChatMessage(
                        role=chat_pb2.ROLE_USER, content=[omni_pb2.ContentPart(text="Hi")]
                    )
                ],
                sampling=chat_pb2.SamplingParams(max_new_tokens=4),
            ),
            timeout=60,
        )
        assert reply.usage.queue_seconds < 2.0
        await push_text(stub, second.session_id, 0, "What is the capital of France?")
        await push_text(stub, first.session_id, 0, "Say hello.")
        await logs[1].wait(turn_done(0), timeout=90)
        await logs[0].wait(turn_done(0), timeout=90)
        # Their turns follow each other; a second turn of the first session keeps its context.
        await push_text(stub, first.session_id, 1, "Say it again.")
        done = await logs[0].wait(turn_done(1), timeout=90)
        assert done.turn_completed.usage.input_tokens > 0
    finally:
        for opened in (first, second):
            await close(stub, opened.session_id)
    answer = "".join(e.delta.text for e in logs[1].events if e.turn == 0)
    assert "Paris" in answer


async def test_a_turn_waiting_behind_a_chat_reports_its_place(stub):
    opened = await open_session(stub, omni_pb2.SESSION_MODE_CHAT, speech_on=False)
    log = EventLog(stub, opened.session_id)
    busy = stub.StreamChat(
        omni_pb2.ChatRequest(
            messages=[
                omni_pb2.ChatMessage(
                    role=chat_pb2.ROLE_USER,
                    content=[omni_pb2.ContentPart(text="Tell me a long story about a dragon.")],
                )
            ],
            # Spoken, so the job surely outlasts the push below.
            sampling=chat_pb2.SamplingParams(max_new_tokens=200),
            speech=omni_pb2.SpeechOptions(enabled=True),
        ),
        timeout=120,
    )
    try:
        async for event in busy:  # the Chat job holds the device once it streams text
            if event.WhichOneof("event") == "delta":
                break
        await push_text(stub, opened.session_id, 0, "What is the capital of France?")
        waiting = await log.wait(lambda e: e.WhichOneof("event") == "queue", timeout=10)
        assert waiting.queue.position == 1
        assert waiting.queue.eta_seconds >= 0
        assert waiting.turn == 0
        busy.cancel()  # the Chat's job is cancelled: the waiting turn runs next
        await log.wait(turn_done(0), timeout=90)
    finally:
        busy.cancel()
        await close(stub, opened.session_id)
    kinds = [e.WhichOneof("event") for e in log.events]
    assert kinds.index("queue") < kinds.index("delta")


async def test_max_sessions_is_enforced(stub):
    opened = [await open_session(stub, omni_pb2.SESSION_MODE_CHAT) for _ in range(2)]
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await open_session(stub, omni_pb2.SESSION_MODE_CHAT)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert retry_info(caught.value) is not None
    finally:
        for session in opened:
            await close(stub, session.session_id)
    again = await open_session(stub, omni_pb2.SESSION_MODE_CHAT)
    await close(stub, again.session_id)


async def test_pause_timeout_releases_the_session(stub):
    opened = await open_session(stub, omni_pb2.SESSION_MODE_HALF_DUPLEX)
    log = EventLog(stub, opened.session_id)
    await log.wait(is_state(LISTENING, "session started"), timeout=30)
    paused = await stub.PauseSession(omni_pb2.PauseSessionRequest(session_id=opened.session_id))
    assert paused.state == PAUSED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PushSessionInput(
            omni_pb2.PushSessionInputRequest(session_id=opened.session_id, sequence=0, text="hi")
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await log.wait(is_state(CLOSED, "pause timeout"), timeout=10)
    await log.ended(timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ResumeSession(omni_pb2.ResumeSessionRequest(session_id=opened.session_id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "pause timeout" in caught.value.details()
    late = [
        e
        async for e in stub.StreamSessionEvents(
            omni_pb2.StreamSessionEventsRequest(session_id=opened.session_id)
        )
    ]
    assert [(e.state.state, e.state.reason) for e in late] == [(CLOSED, "pause timeout")]


async def test_session_inputs_get_the_right_codes(stub):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PushSessionInput(
            omni_pb2.PushSessionInputRequest(
                session_id="00000000-0000-4000-8000-000000000000", sequence=0, text="hi"
            )
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PauseSession(omni_pb2.PauseSessionRequest(session_id="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    opened = await open_session(stub, omni_pb2.SESSION_MODE_HALF_DUPLEX)
    sid = opened.session_id

    def push(sequence, **input_):
        return stub.PushSessionInput(
            omni_pb2.PushSessionInputRequest(session_id=sid, sequence=sequence, **input_)
        )

    def pcm(data, **kw):
        return media_pb2.Audio(data=data, format=media_pb2.AUDIO_FORMAT_PCM_S16LE, **kw)

    try:
        ack = await push(0, audio=pcm(b"\x00\x00" * 1600, sample_rate_hz=16000))
        assert ack.acked_sequence == 0
        repeated = await push(0, audio=pcm(b"\x00\x00" * 1600))  # a retried push is ignored
        assert repeated.acked_sequence == 0
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await push(5, text="gap")
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        cases = [
            (pcm(b"\x00\x00" * 1600, sample_rate_hz=8000), "audio.sample_rate_hz"),
            (pcm(b"\x00\x00" * 1600, channels=2), "audio.channels"),
            (pcm(b"\x00\x00\x00"), "audio.data"),
            (pcm(b"\x00\x00" * 32000), "audio"),  # 2 s: over the 1 s chunk limit
            (pcm(b"\x00" * (2 * 1024 * 1024)), "audio.data"),  # over the byte limit
            (
                media_pb2.Audio(data=b"fLaC" + b"\x00" * 64, format=media_pb2.AUDIO_FORMAT_FLAC),
                "audio.format",
            ),
            (media_pb2.Audio(data=b"garbage", format=media_pb2.AUDIO_FORMAT_WAV), "audio.data"),
        ]
        for audio, field in cases:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await push(1, audio=audio)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
            assert field_violations(caught.value) == [field]
        ack = await push(1, audio=media_pb2.Audio(data=wav(silence(0.2))))  # WAV is fine too
        assert ack.acked_sequence == 1
    finally:
        await close(stub, sid)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await push(2, text="after close")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await open_session(stub, omni_pb2.SESSION_MODE_OMNI_DUPLEX)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await open_session(stub, omni_pb2.SESSION_MODE_CHAT, record=True)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_heartbeats_flow_while_idle(stub):
    opened = await open_session(stub, omni_pb2.SESSION_MODE_CHAT)
    log = EventLog(stub, opened.session_id)
    try:
        beat = await log.wait(lambda e: e.WhichOneof("event") == "heartbeat", timeout=10)
        assert beat.heartbeat.elapsed_seconds > 0
    finally:
        await close(stub, opened.session_id)
    await asyncio.wait_for(log.ended(5), 6)


async def test_idle_session_is_released(stub):
    opened = await open_session(stub, omni_pb2.SESSION_MODE_CHAT)
    # No reader and no input: released after the idle timeout (3 s here), its reason kept.
    await asyncio.sleep(4.5)
    events = [
        e
        async for e in stub.StreamSessionEvents(
            omni_pb2.StreamSessionEventsRequest(session_id=opened.session_id), timeout=10
        )
    ]
    assert [(e.state.state, e.state.reason) for e in events] == [(CLOSED, "idle timeout")]
