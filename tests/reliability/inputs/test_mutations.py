"""One-field mutation fuzzing of every RPC, through the real servers.

Each RPC starts from a valid request (bases.py) and changes one field at a time to a boundary
or hostile value (mutations.py: NaN, infinities, denormals, zero, negatives, type extremes,
empty and huge strings and lists, unknown enum numbers, hostile image and audio bytes, URIs of
every scheme). Every call must end OK or with a defined status (never UNKNOWN, INTERNAL or a
hang); an INVALID_ARGUMENT must name the mutated field (or a message holding it, or a field
beside it that a rule ties it to); and the next valid request must be served. Each RPC's
batch ends with the usual checks: alive, SERVING, nothing in the error log, normal requests
answered.

CI runs a deterministic share of the mutations (about 400 calls): one value per field, the
values rotating over the fields, and an RPC that shares its request message with an earlier
one (StreamChat with Chat) starts the rotation further on, so the pair covers more values; a
valid call follows every fourth mutation and every failing one. MMSERVE_MUTATIONS=all runs
every mutation of every RPC (about 2,700 calls, a valid call after each); a number N runs N
values per field.
"""

from __future__ import annotations

import os
from collections import defaultdict

import grpc
import pytest
from google.protobuf.message import Message

from tests.reliability.inputs.bases import (
    Base,
    base_for,
    cleanup,
    close_push_session,
    rpc_message,
)
from tests.reliability.inputs.checks import assert_clean, still_serving
from tests.reliability.inputs.fleet import HttpMedia, MediaRoot, Outcome, Rpc, Served, all_rpcs
from tests.reliability.inputs.mutations import Mutation, mutations, related
from tests.reliability.inputs.tally import TALLY

_SETTING = os.environ.get("MMSERVE_MUTATIONS", "")
PER_FIELD = 0 if _SETTING == "all" else int(_SETTING or "1")
# The valid request after each mutation (or after every Nth, in CI) shows the server still
# serves it: nothing a bad request did lingers.
NEXT_VALID_EVERY = 1 if _SETTING else 4
# A full run of one chat RPC takes minutes on two cores.
RPC_TIMEOUT = 3600 if _SETTING else 300


def _siblings(rpc: Rpc) -> int:
    """How many RPCs before this one of its capability take the same request message."""
    earlier = [
        other
        for other in all_rpcs()
        if other.capability == rpc.capability and other.input.full_name == rpc.input.full_name
    ]
    return [other.name for other in earlier].index(rpc.name)


def select(found: list[Mutation], rpc: Rpc) -> list[Mutation]:
    """The share of `found` this run sends: PER_FIELD values of each field, chosen so the
    values rotate across fields (the first field gets values 0 and 1, the next 1 and 2...),
    and shifted for a second RPC of the same request message, which then covers others."""
    if PER_FIELD == 0:
        return found
    by_field: dict[str, list[Mutation]] = defaultdict(list)
    for mutation in found:
        by_field[mutation.path].append(mutation)
    offset = _siblings(rpc) * PER_FIELD
    chosen: list[Mutation] = []
    for rank, (_path, values) in enumerate(by_field.items()):
        for k in range(min(PER_FIELD, len(values))):
            chosen.append(values[(rank + offset + k) % len(values)])
    return chosen


def _problems(outcome: Outcome, base: Base) -> list[str]:
    problems = outcome.problems()
    if base.max_events is not None and outcome.code is grpc.StatusCode.OK:
        # A stream the test cut short (it only ends when told) never got its trailers.
        problems = [p for p in problems if "without x-request-id" not in p]
    return problems


def judge(outcome: Outcome, mutation: Mutation, base: Base) -> list[str]:
    problems = _problems(outcome, base)
    fields = outcome.violations if outcome.code is grpc.StatusCode.INVALID_ARGUMENT else []
    if fields and not any(related(field, mutation.path) for field in fields):
        problems.append(f"violations name {outcome.violations}, not {mutation.path}")
    return problems


def _allowed_uris(media_root: MediaRoot, http_media: HttpMedia) -> list[tuple[str, str]]:
    return [
        ("allowed_file", f"file://{media_root.allowed}/ok.png"),
        ("allowed_http", http_media.url("/allowed/ok.wav")),
    ]


def _send(served: Served, rpc: Rpc, base: Base, request: Message) -> Outcome:
    outcome = served.call(rpc, request, max_events=base.max_events)
    cleanup(served, outcome)
    return outcome


@pytest.mark.timeout(RPC_TIMEOUT)
@pytest.mark.parametrize("rpc", all_rpcs(), ids=str)
def test_one_field_mutations(
    rpc: Rpc, fleet: dict[str, Served], media_root: MediaRoot, http_media: HttpMedia
) -> None:
    served = fleet[rpc.capability]
    registered = base_for(rpc)
    base = registered or Base(lambda _s: rpc_message(rpc))
    problems: list[str] = []
    try:
        first = base.build(served)
        valid = _send(served, rpc, base, first)
        failed = registered is not None and (
            valid.code not in base.expect or bool(_problems(valid, base))
        )
        TALLY.add(f"mutations: valid bases ({rpc.capability})", valid.code.name, failed)
        if failed:
            problems.append(f"the base request itself: {valid} {_problems(valid, base)}")
        found = mutations(first, _allowed_uris(media_root, http_media))
        for index, mutation in enumerate(select(found, rpc)):
            request = mutation.apply(base.build(served) if base.fresh else first)
            outcome = _send(served, rpc, base, request)
            bad = judge(outcome, mutation, base)
            TALLY.add(f"mutations: {rpc.capability}", outcome.code.name, bool(bad))
            problems += [f"{mutation} -> {outcome}: {p}" for p in bad]
            if not served.alive():
                problems.append(f"server died after {mutation}:\n{served.log_tail()}")
                break
            if (index + 1) % NEXT_VALID_EVERY == 0 or bad:
                follow = _send(served, rpc, base, base.build(served) if base.fresh else first)
                trouble = _problems(follow, base)
                failed = follow.code not in base.expect or bool(trouble)
                TALLY.add(
                    f"mutations: valid call after ({rpc.capability})", follow.code.name, failed
                )
                if follow.code not in base.expect or trouble:
                    problems.append(f"valid request after {mutation}: {follow} {trouble}")
    finally:
        close_push_session(served)
    assert_clean(problems + still_serving(served, f"mutating {rpc}"))


def test_every_rpc_has_a_base() -> None:
    """A new RPC is mutated from the empty request until it gets a valid base in bases.py:
    then its mutations reach past the first required field."""
    missing = [str(rpc) for rpc in all_rpcs() if base_for(rpc) is None]
    assert not missing, f"RPCs without a valid base request in bases.py: {missing}"


def test_mutations_cover_every_field_of_a_base() -> None:
    """The generator walks set and unset fields: every field of the omni chat request's
    sampling is changed, and each change touches exactly that field."""
    rpc = next(r for r in all_rpcs() if str(r) == "omni.Chat")
    base = base_for(rpc)
    assert base is not None
    first = base.build(None)  # type: ignore[arg-type]
    found = mutations(first)
    paths = {m.path for m in found}
    for name in ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty"):
        assert f"sampling.{name}" in paths
    assert "messages[0].content[0].image.data" in paths
    for mutation in found:
        changed = mutation.apply(first)
        assert changed != first or mutation.label.startswith("unset"), str(mutation)


def test_a_violation_must_name_the_mutated_field() -> None:
    assert related("sampling.temperature", "sampling.temperature")
    assert related("messages[0]", "messages[0].role")  # the message holding it
    assert related("messages[0].content[1].image", "messages[0].content[1].image.data")
    assert related("params.num_inference_steps", "params.width")  # a rule beside it
    assert not related("sampling.top_p", "messages[0].role")
    assert not related("messages[1].role", "messages[0].role")
    assert not related("images[0]", "labels")
