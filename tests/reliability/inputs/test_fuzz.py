"""Property-based fuzzing of every request message of every RPC, through real servers.

The RPCs come from the service descriptors and the requests from the message descriptors
(protofuzz.py), so a new RPC or field is fuzzed without touching this file. Every call must end
with a defined status code within its deadline (never UNKNOWN, INTERNAL, a hang or a crash),
an INVALID_ARGUMENT must name a field of the request, and after each RPC's batch the server
must still be SERVING, log no errors and answer normal requests.

Runs are reproducible (derandomized); MMSERVE_FUZZ_EXAMPLES raises the example count for a
longer soak (default 10 per RPC keeps the suite within CI's budget on two cores).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mmserve.common.v1 import chat_pb2
from mmserve.omni.v1 import omni_pb2
from mmserve.t2i.v1 import t2i_pb2
from tests.reliability.inputs.checks import assert_clean, record, still_serving
from tests.reliability.inputs.corpus import valid_audio, valid_images
from tests.reliability.inputs.fleet import HttpMedia, MediaRoot, Outcome, Rpc, Served, all_rpcs
from tests.reliability.inputs.protofuzz import Pools, messages

EXAMPLES = int(os.environ.get("MMSERVE_FUZZ_EXAMPLES", "10"))
SESSION_EXAMPLES = max(3, EXAMPLES // 2)


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,  # each call has its own gRPC deadline
        derandomize=True,  # the same examples on every run: CI failures reproduce
        database=None,
        # Shrinking replays failing calls many times; the first failing example is reported
        # as it is, which keeps a failing run bounded too.
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=(
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ),
        print_blob=False,
    )


def _short(message: Message | list[Message]) -> str:
    text = str(message)
    return text if len(text) < 1500 else text[:1500] + f"... ({len(text)} chars)"


def pools_for(served: Served, media_root: MediaRoot, http_media: HttpMedia) -> Pools:
    """Values that reach deeper than chance: live ids, real media, URIs at the policy edges."""
    allowed, outside = media_root.allowed, media_root.outside
    uris = [
        f"file://{allowed}/ok.png",
        f"file://{allowed}/ok.wav",
        f"file://{allowed}/../outside/secret.png",
        f"file://{outside}/secret.png",
        f"file://{allowed}/fifo.png",
        "file:///etc/passwd",
        http_media.url("/allowed/ok.png"),
        http_media.url("/allowed/redirect-private"),
        http_media.url("/private/secret.png"),
        "ftp://127.0.0.1/x.png",
        "gopher://127.0.0.1:70/_x",
        "data:image/png;base64,iVBORw0KGgo=",
        "http://[::1",
        "",
    ]
    texts = ["a red cat", "hello", "a photo of a dog", "Say hi."]
    data = [m.data for m in valid_images()] + [a.data for a in valid_audio()]
    user_text = omni_pb2.ChatMessage(
        role=chat_pb2.ROLE_USER, content=[omni_pb2.ContentPart(text="Hi.")]
    )
    return Pools(
        strings={
            "session_id": [*served.pools.get("session_id", []), "nope", "0" * 64],
            "job_id": [*served.pools.get("job_id", [])[-3:], "nope"],
            "voice_id": [*served.pools.get("voice", []), "voice-nope"],
            "voice": [*served.pools.get("voice", []), "voice-nope"],
            "uri": uris,
            "prompt": texts,
            "text": texts,
            "texts": texts,
            "labels": ["cat", "dog"],
            "templates": ["a photo of a {}.", "{}"],
            "name": ["fuzz voice"],
        },
        byte_values={"data": data},
        messages={
            "mmserve.common.v1.Image": list(valid_images()),
            "mmserve.common.v1.Audio": list(valid_audio()),
            "mmserve.common.v1.SamplingParams": [
                chat_pb2.SamplingParams(max_new_tokens=2),
                chat_pb2.SamplingParams(max_new_tokens=2, temperature=0.7, top_p=0.9, seed=3),
            ],
            "mmserve.t2i.v1.GenerationParams": [
                t2i_pb2.GenerationParams(prompt="a cat", width=64, height=64, seed=1)
            ],
            "mmserve.omni.v1.ChatMessage": [user_text],
        },
    )


def cleanup(served: Served, outcome: Outcome) -> None:
    """Gives back what a successful fuzzed call took: an open session holds the device (the
    next Chat would queue behind it), a registered voice takes a registry slot."""
    if outcome.code.name != "OK" or not outcome.responses:
        return
    reply = outcome.responses[0]
    if outcome.rpc.name == "OpenSession":
        closed = served.call(
            "CloseSession", omni_pb2.CloseSessionRequest(session_id=reply.session_id)
        )
        assert closed.code.name == "OK", str(closed)
    elif outcome.rpc.name == "RegisterVoice":
        served.call("DeleteVoice", omni_pb2.DeleteVoiceRequest(voice_id=reply.voice.voice_id))


def _prepare_pools(served: Served) -> None:
    """Ids that exist on the server: a closed session and the built-in voices (omni)."""
    if served.capability != "omni" or "voice" in served.pools:
        return
    voices = served.call("ListVoices", omni_pb2.ListVoicesRequest())
    served.pools["voice"] = (
        [v.voice_id for v in voices.responses[0].voices] if voices.responses else []
    )
    opened = served.call("OpenSession", omni_pb2.OpenSessionRequest())
    if opened.code.name == "OK":
        session_id = opened.responses[0].session_id
        served.call("CloseSession", omni_pb2.CloseSessionRequest(session_id=session_id))
        served.pools["session_id"] = [session_id]


@pytest.mark.parametrize("rpc", all_rpcs(), ids=str)
def test_random_requests_end_with_defined_codes(
    rpc: Rpc, fleet: dict[str, Served], media_root: MediaRoot, http_media: HttpMedia
) -> None:
    served = fleet[rpc.capability]
    _prepare_pools(served)
    one = messages(rpc.input, pools_for(served, media_root, http_media))
    request_strategy: st.SearchStrategy[Any] = (
        st.lists(one, max_size=3) if rpc.method.client_streaming else one
    )

    @fuzz_settings(EXAMPLES)
    @given(request=request_strategy)
    def call_once(request: Message) -> None:
        outcome = served.call(rpc, request)
        problems = outcome.problems()
        record(f"fuzz: {rpc.capability} requests", outcome)
        cleanup(served, outcome)
        assert not problems, f"{outcome}\n" + "\n".join(problems) + f"\nrequest:\n{_short(request)}"

    call_once()
    assert_clean(still_serving(served, f"fuzzing {rpc}"))


# ---------------------------------------------------------------------------------------------
# Duplex sessions: a live session fed random inputs, paused and resumed, then closed.

_MODES = (
    omni_pb2.SESSION_MODE_CHAT,
    omni_pb2.SESSION_MODE_HALF_DUPLEX,
    omni_pb2.SESSION_MODE_AUDIO_DUPLEX,
)
_CONTROLS = (None, None, "PauseSession", "ResumeSession")


@pytest.mark.servers("omni")
def test_live_sessions_survive_random_inputs(
    omni: Served, media_root: MediaRoot, http_media: HttpMedia
) -> None:
    _prepare_pools(omni)
    pools = pools_for(omni, media_root, http_media)
    pushes = messages(omni_pb2.PushSessionInputRequest.DESCRIPTOR, pools)
    steps = st.lists(
        st.tuples(pushes, st.booleans(), st.sampled_from(_CONTROLS)), min_size=1, max_size=5
    )

    @fuzz_settings(SESSION_EXAMPLES)
    @given(mode=st.sampled_from(_MODES), steps=steps)
    def session_once(
        mode: int, steps: list[tuple[omni_pb2.PushSessionInputRequest, bool, str | None]]
    ) -> None:
        opened = omni.call("OpenSession", omni_pb2.OpenSessionRequest(mode=mode))
        record("fuzz: omni live session calls", opened)
        assert opened.code.name == "OK", str(opened)
        session_id = opened.responses[0].session_id
        reader: dict[str, Outcome] = {}
        events = threading.Thread(
            target=lambda: reader.update(
                out=omni.call(
                    "StreamSessionEvents",
                    omni_pb2.StreamSessionEventsRequest(session_id=session_id),
                    timeout=90,
                )
            ),
            daemon=True,
        )
        events.start()
        problems: list[str] = []
        expected = 1
        for push, in_order, control in steps:
            request = omni_pb2.PushSessionInputRequest()
            request.CopyFrom(push)
            request.session_id = session_id
            if in_order:
                request.sequence = expected
            outcome = omni.call("PushSessionInput", request)
            record("fuzz: omni live session calls", outcome)
            problems += [f"{p}: {outcome}\n{_short(request)}" for p in outcome.problems()]
            if outcome.code.name == "OK":
                expected = outcome.responses[0].acked_sequence + 1
            if control is not None:
                ctrl = omni.call(
                    control, getattr(omni_pb2, f"{control}Request")(session_id=session_id)
                )
                record("fuzz: omni live session calls", ctrl)
                if ctrl.code.name != "OK":
                    problems.append(f"{control} of a live session: {ctrl}")
        closed = omni.call("CloseSession", omni_pb2.CloseSessionRequest(session_id=session_id))
        record("fuzz: omni live session calls", closed)
        if closed.code.name != "OK":
            problems.append(f"CloseSession: {closed}")
        events.join(timeout=60)
        stream = reader.get("out")
        if events.is_alive() or stream is None:
            problems.append("the session's event stream did not end after CloseSession")
        else:
            record("fuzz: omni live session calls", stream)
            last = stream.responses[-1] if stream.responses else None
            if (
                stream.code.name != "OK"
                or last is None
                or last.WhichOneof("event") != "state"
                or (last.state.state != omni_pb2.SESSION_STATE_CLOSED)
            ):
                problems.append(f"event stream did not end with CLOSED: {stream} last={last}")
        assert not problems, "\n".join(problems)

    session_once()
    assert_clean(still_serving(omni, "fuzzing live sessions"))
