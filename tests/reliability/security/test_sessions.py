"""Live (duplex) session ids are unguessable and bound to the key that opened the session: with
another key, every session call on it (push, events, pause, resume, close) is NOT_FOUND, word
for word what an unknown id gets, before and after the session closed, and the owner's session
is unharmed. Through the real omni service (SmolLM2) with auth on."""

from __future__ import annotations

import asyncio
import itertools
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from mmserve.common.v1 import chat_pb2
from mmserve.omni.v1 import omni_pb2, omni_pb2_grpc
from tests.reliability.security.conftest import Keys
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.asyncio(loop_scope="module")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stub(omni: ServerProcess) -> AsyncIterator[omni_pb2_grpc.OmniServiceStub]:
    async with grpc.aio.insecure_channel(omni.target) as channel:
        yield omni_pb2_grpc.OmniServiceStub(channel)


async def open_session(stub: omni_pb2_grpc.OmniServiceStub, key: str) -> str:
    reply = await stub.OpenSession(
        omni_pb2.OpenSessionRequest(sampling=chat_pb2.SamplingParams(max_new_tokens=4)),
        metadata=Keys.bearer(key),
        timeout=60,
    )
    return str(reply.session_id)


async def close(stub: omni_pb2_grpc.OmniServiceStub, session_id: str, key: str) -> Any:
    return await stub.CloseSession(
        omni_pb2.CloseSessionRequest(session_id=session_id), metadata=Keys.bearer(key), timeout=60
    )


async def outcome(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        if isinstance(call, grpc.aio.UnaryStreamCall):
            while await call.read() is not grpc.aio.EOF:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def session_calls(
    stub: omni_pb2_grpc.OmniServiceStub, session_id: str, key: str, sequence: int = 0
) -> dict[str, Any]:
    """Every session RPC on `session_id` as `key` (not started until awaited)."""
    metadata = Keys.bearer(key)
    return {
        "PushSessionInput": lambda: stub.PushSessionInput(
            omni_pb2.PushSessionInputRequest(
                session_id=session_id, sequence=sequence, text="hello", end_of_turn=True
            ),
            metadata=metadata,
            timeout=30,
        ),
        "StreamSessionEvents": lambda: stub.StreamSessionEvents(
            omni_pb2.StreamSessionEventsRequest(session_id=session_id),
            metadata=metadata,
            timeout=30,
        ),
        "PauseSession": lambda: stub.PauseSession(
            omni_pb2.PauseSessionRequest(session_id=session_id), metadata=metadata, timeout=30
        ),
        "ResumeSession": lambda: stub.ResumeSession(
            omni_pb2.ResumeSessionRequest(session_id=session_id), metadata=metadata, timeout=30
        ),
        "CloseSession": lambda: stub.CloseSession(
            omni_pb2.CloseSessionRequest(session_id=session_id), metadata=metadata, timeout=30
        ),
    }


async def test_session_ids_are_random_uuid4(
    stub: omni_pb2_grpc.OmniServiceStub, keys: Keys
) -> None:
    ids = []
    for _ in range(10):
        session_id = await open_session(stub, keys.alice)
        ids.append(session_id)
        await close(stub, session_id, keys.alice)
    assert len(set(ids)) == len(ids)
    for session_id in ids:
        # UUID version 4: 122 random bits from the OS's CSPRNG, so guessing is hopeless.
        assert UUID4.match(session_id), session_id
        assert uuid.UUID(session_id).version == 4
    # Nothing sequential or shared: ids opened back to back differ in about half their bits.
    for a, b in itertools.pairwise(ids):
        differing = bin(uuid.UUID(a).int ^ uuid.UUID(b).int).count("1")
        assert 30 < differing < 100, (a, b)


async def test_another_key_cannot_touch_a_session(
    stub: omni_pb2_grpc.OmniServiceStub, keys: Keys
) -> None:
    session_id = await open_session(stub, keys.alice)
    unknown = str(uuid.uuid4())
    try:
        for name, make in session_calls(stub, session_id, keys.bob).items():
            code, details = await outcome(make())
            assert code == grpc.StatusCode.NOT_FOUND, (name, code, details)
            # Indistinguishable from an id that does not exist: no existence oracle.
            _, unknown_details = await outcome(session_calls(stub, unknown, keys.bob)[name]())
            assert details.replace(session_id, "ID") == unknown_details.replace(unknown, "ID")
        # The owner's session was not paused, resumed or closed by any of that.
        events = stub.StreamSessionEvents(
            omni_pb2.StreamSessionEventsRequest(session_id=session_id),
            metadata=Keys.bearer(keys.alice),
            timeout=30,
        )
        first = await asyncio.wait_for(events.read(), 30)
        assert first.state.state != omni_pb2.SESSION_STATE_CLOSED
        events.cancel()
        pushed = await stub.PushSessionInput(
            omni_pb2.PushSessionInputRequest(
                session_id=session_id, sequence=0, text="hello", end_of_turn=True
            ),
            metadata=Keys.bearer(keys.alice),
            timeout=30,
        )
        assert pushed.acked_sequence == 0
    finally:
        await close(stub, session_id, keys.alice)
    # Closed: the owner still learns how it ended; to anyone else it never existed.
    code, _ = await outcome(session_calls(stub, session_id, keys.alice)["CloseSession"]())
    assert code == grpc.StatusCode.OK
    for name, make in session_calls(stub, session_id, keys.bob, sequence=1).items():
        code, details = await outcome(make())
        assert code == grpc.StatusCode.NOT_FOUND, (name, code, details)
