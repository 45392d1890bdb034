"""Every RPC that takes an image or audio gets the whole hostile corpus (corpus.py): refused
files must end with INVALID_ARGUMENT naming the media field, unusual but valid files must be
used, and the server must keep serving (alive, SERVING, nothing in its error log, normal
requests answered) after each RPC's batch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import grpc
import pytest
from google.protobuf.message import Message

from mmserve.common.v1 import media_pb2
from mmserve.omni.v1 import omni_pb2
from tests.reliability.inputs.checks import assert_clean, record, still_serving
from tests.reliability.inputs.corpus import (
    ACCEPT,
    EITHER,
    REFUSE,
    audio_corpus,
    image_corpus,
    sine,
    sound_file,
)
from tests.reliability.inputs.fleet import Outcome, Served
from tests.reliability.inputs.slots import (
    AUDIO,
    IMAGE,
    NO_EDITS,
    Slot,
    all_slots,
    refused_before_reading,
    rpcs_taking_media,
)

IMAGE_SLOTS = [slot for slot in all_slots() if slot.kind == IMAGE]
AUDIO_SLOTS = [slot for slot in all_slots() if slot.kind == AUDIO]


def test_every_rpc_that_takes_media_has_a_slot() -> None:
    """A new RPC (or a new media field) must get a slot, or these tests would skip it."""
    slots = {(slot.capability, slot.rpc_name, slot.kind) for slot in all_slots()}
    missing = [
        f"{rpc} ({kind})"
        for rpc, kind in rpcs_taking_media()
        if (rpc.capability, rpc.name, kind) not in slots
    ]
    assert not missing, f"RPCs taking media without a slot in slots.py: {missing}"
    known = {(rpc.capability, rpc.name, kind) for rpc, kind in rpcs_taking_media()}
    assert slots <= known, f"slots for RPCs that take no such media: {slots - known}"


class LiveSession:
    """An open omni session to push into; the next sequence number follows the acks."""

    def __init__(self, served: Served, session_id: str) -> None:
        self.served = served
        self.session_id = session_id
        self.sequence = 0  # the first chunk of a session is sequence 0

    def push(self, request: Message) -> Outcome:
        push = omni_pb2.PushSessionInputRequest()
        push.CopyFrom(request)
        push.session_id = self.session_id
        push.sequence = self.sequence
        outcome = self.served.call("PushSessionInput", push)
        if outcome.code is grpc.StatusCode.OK:
            self.sequence = outcome.responses[0].acked_sequence + 1
        return outcome


@contextmanager
def live_session(served: Served) -> Iterator[LiveSession]:
    # CHAT mode: pushed media wait for end_of_turn, which never comes, so no model runs; the
    # push itself decodes and checks them.
    opened = served.call("OpenSession", omni_pb2.OpenSessionRequest())
    assert opened.code is grpc.StatusCode.OK, str(opened)
    session = LiveSession(served, opened.responses[0].session_id)
    try:
        yield session
    finally:
        closed = served.call(
            "CloseSession", omni_pb2.CloseSessionRequest(session_id=session.session_id)
        )
        assert closed.code is grpc.StatusCode.OK, str(closed)


def accepted_codes(served: Served, slot: Slot) -> set[grpc.StatusCode]:
    """What a good file gets: OK, except an image for an omni model without image input,
    which is decoded (and checked) and then FAILED_PRECONDITION."""
    if slot.capability == "omni" and slot.kind == IMAGE and slot.rpc_name != "PushSessionInput":
        info = served.call("GetModelInfo", omni_pb2.GetModelInfoRequest())
        if not info.responses[0].supports_image_input:
            return {grpc.StatusCode.FAILED_PRECONDITION}
    return {grpc.StatusCode.OK}


def judge(outcome: Outcome, expect: str, slot: Slot, accepted: set[grpc.StatusCode]) -> list[str]:
    problems = outcome.problems()
    refused = outcome.code is grpc.StatusCode.INVALID_ARGUMENT and any(
        field.startswith(slot.field) for field in outcome.violations
    )
    ok = outcome.code in accepted
    if expect == ACCEPT and slot.judges_content:
        expect = EITHER
    if expect == REFUSE and not refused:
        problems.append(f"expected INVALID_ARGUMENT naming {slot.field}")
    elif expect == ACCEPT and not ok:
        problems.append(f"expected {sorted(c.name for c in accepted)}")
    elif expect == EITHER and not (refused or ok):
        problems.append(f"expected INVALID_ARGUMENT naming {slot.field} or acceptance")
    return problems


def _send_all(
    served: Served, slot: Slot, files: list[tuple[str, Message, str]], kind: str
) -> list[str]:
    accepted = accepted_codes(served, slot)
    problems: list[str] = []
    if slot.prepare is not None:
        slot.prepare(served)
    context = live_session(served) if slot.needs_session else nullcontext()
    with context as session:
        for name, media, expect in files:
            request = slot.build(media)  # type: ignore[arg-type]
            outcome = session.push(request) if session else served.call(slot.rpc_name, request)
            found = judge(outcome, expect, slot, accepted)
            record(kind, outcome, failed=bool(found))
            problems += [f"{name} ({expect}) -> {outcome}: {p}" for p in found]
    return problems


@pytest.mark.parametrize("slot", IMAGE_SLOTS, ids=str)
def test_hostile_images(slot: Slot, fleet: dict[str, Served]) -> None:
    served = fleet[slot.capability]
    if refused_before_reading(served, slot):
        pytest.skip(NO_EDITS)
    files = [(f.name, f.message(), f.expect_for(slot.capability)) for f in image_corpus()]
    problems = _send_all(served, slot, files, f"hostile images: {slot.capability}")
    assert_clean(problems + still_serving(served, f"hostile images to {slot}"))


# Every accepted clip costs a Whisper pass (~1-2 s on two busy cores). StreamChat decodes
# through the same code as Chat, so it gets every refused or doubtful file but one accepted.
_ONE_ACCEPTED = {"omni.StreamChat"}


@pytest.mark.parametrize("slot", AUDIO_SLOTS, ids=str)
def test_hostile_audio(slot: Slot, fleet: dict[str, Served]) -> None:
    served = fleet[slot.capability]
    files = [(f.name, f.message(), f.expect[slot.use]) for f in audio_corpus()]
    if f"{slot.capability}.{slot.rpc_name}" in _ONE_ACCEPTED:
        accepted = [entry for entry in files if entry[2] == ACCEPT]
        files = [entry for entry in files if entry[2] != ACCEPT] + accepted[:1]
    problems = _send_all(served, slot, files, f"hostile audio: {slot.capability}")
    assert_clean(problems + still_serving(served, f"hostile audio to {slot}"))


@pytest.mark.servers("omni")
def test_non_speech_audio_does_not_hold_the_device(omni: Served) -> None:
    clip = media_pb2.Audio(data=sound_file(sine(3.5, 16000), 16000, "WAV", "PCM_16"))
    slot = next(s for s in AUDIO_SLOTS if s.rpc_name == "Chat")
    outcome = omni.call("Chat", slot.build(clip))
    record("non-speech audio (sine)", outcome)
    assert outcome.code is grpc.StatusCode.OK, str(outcome)
    assert outcome.seconds < 5.0, f"3.5 s of a sine took {outcome.seconds:.1f} s of the device"
