"""A replica lost under load behind the edge: killed (SIGKILL) or drained (SIGTERM with a short
grace) while closed-loop clients on the raw generated stubs keep calling through Envoy.

What a client sees:
- a unary call that did not ask for its job id early never fails: its response headers leave
  the replica only with the result, so Envoy retries it on the other replica;
- a stream (and a unary call that asked for its job id early, `mmserve-job-id-early`) cut on
  the lost replica after its headers went out: from a drain, UNAVAILABLE naming the replica
  (the replica ends it); from a kill, Envoy can only reset it, which gRPC reports as INTERNAL
  "RST_STREAM" (the SDK turns that into UNAVAILABLE naming the replica; docs/clients.md);
- every call started once the replica is gone succeeds.

The figures are recorded in tests/RELIABILITY.md. The Go side is tests/e2e/test_go_client.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from gateway.catalog import CAPABILITIES, capability
from gateway.descriptors import build_descriptor_set
from gateway.processes import REPO
from gateway.render import AT_MOST_ONCE, AT_MOST_ONCE_EVERYWHERE, EdgeConfig
from gateway.stack import ServiceGroup, Stack, StackConfig
from mmserve.t2i.v1 import t2i_pb2, t2i_pb2_grpc
from mmserve_client.errors import from_rpc_error
from tests.e2e.conftest import SERVICE_ENV
from tests.e2e.support import (
    REPLICA_HEADER,
    SLEEPY,
    host_status,
    in_rotation,
    replica_of,
    replica_value,
    t2i_request,
)
from tests.e2e.test_go_client import edgeclient  # noqa: F401 (the Go client, built once)

STEP_SECONDS = 0.1
DRAIN_GRACE = 0.5
UNARY_STEPS = 2  # 0.2 s a call
STREAM_STEPS = 12  # 1.2 s: outlasts the drain grace, so a drain cuts it
PROBE_STEPS = 50  # 5 s: surely in flight when the replica is lost
EARLY = ("mmserve-job-id-early", "1")
JOB_ID = "mmserve-job-id"


def failover_config(run_dir: Any) -> StackConfig:
    group = ServiceGroup(
        capability("t2i"),
        replicas=2,
        module=SLEEPY,
        args=(
            "--step-seconds",
            str(STEP_SECONDS),
            "--drain-grace-seconds",
            str(DRAIN_GRACE),
            "--log-level",
            "INFO",
        ),
    )
    edge = EdgeConfig(
        upstreams=(),
        edge_endpoints=(),
        descriptor_path="",
        # A restarted replica must be routable again within the test.
        outlier_ejection_s=1.0,
    )
    return StackConfig(
        groups=[group],
        port=0,
        admin_port=0,
        run_dir=run_dir,
        ready_timeout=120,
        stop_grace=20,
        env=SERVICE_ENV,
        edge=edge,
        openai=False,
    )


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(failover_config(tmp_path_factory.mktemp("failover-stack")))
    stack.start()
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


def addresses(stack: Stack) -> list[str]:
    return [str(e) for e in stack.group("t2i").endpoints]


async def until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


@dataclass
class Outcome:
    kind: str  # "unary", "early" (asked for its job id early) or "stream"
    started: float
    ended: float
    code: grpc.StatusCode
    replica: str = ""  # from the edge's mmserve-replica header, when it came
    pinned: str = ""  # the replica the call was pinned to, if any
    messages: int = 0  # stream messages received before the end
    error: grpc.aio.AioRpcError | None = None

    @property
    def details(self) -> str:
        return (self.error.details() or "") if self.error is not None else ""

    def on(self, replica: str) -> bool:
        return replica in (self.replica, self.pinned)


@dataclass
class Load:
    """Closed-loop callers on the raw stubs: plain unary calls, unary calls that ask for their
    job id early, and streams. The early caller and one stream caller are pinned to `victim`,
    so the lost replica surely has calls of both kinds in flight."""

    stub: t2i_pb2_grpc.ImageGenerationServiceStub
    victim: str
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, unary: int = 3, streams: int = 2) -> None:
        pin = replica_value(self.victim)
        workers = [self._unary(()) for _ in range(unary)]
        workers.append(self._unary((EARLY, (REPLICA_HEADER, pin)), kind="early"))
        workers.append(self._stream(((REPLICA_HEADER, pin),)))
        workers += [self._stream(()) for _ in range(streams - 1)]
        self._tasks = [asyncio.create_task(w) for w in workers]

    async def _unary(self, metadata: tuple[tuple[str, str], ...], kind: str = "unary") -> None:
        pinned = self.victim if any(k == REPLICA_HEADER for k, _ in metadata) else ""
        while not self._stop.is_set():
            started = time.monotonic()
            call = self.stub.TextToImage(
                t2i_request(steps=UNARY_STEPS), metadata=metadata, timeout=30
            )
            error = None
            try:
                await call
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                code, error = exc.code(), exc
            headers = dict(await call.initial_metadata() or ())
            replica = replica_of(headers.get(REPLICA_HEADER))
            self.outcomes.append(
                Outcome(kind, started, time.monotonic(), code, replica, pinned, 0, error)
            )

    async def _stream(self, metadata: tuple[tuple[str, str], ...]) -> None:
        pinned = self.victim if metadata else ""
        while not self._stop.is_set():
            started = time.monotonic()
            call = self.stub.StreamTextToImage(
                t2i_request(steps=STREAM_STEPS), metadata=metadata, timeout=30
            )
            messages, error = 0, None
            try:
                async for _ in call:
                    messages += 1
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                code, error = exc.code(), exc
            headers = dict(await call.initial_metadata() or ())
            replica = replica_of(headers.get(REPLICA_HEADER))
            self.outcomes.append(
                Outcome("stream", started, time.monotonic(), code, replica, pinned, messages, error)
            )

    async def probe(self, channel: grpc.aio.Channel) -> None:
        """Starts a long stream and a long unary call that asks for its job id early, both
        pinned to the victim, and returns once both are past their response headers: losing
        the victim now surely cuts these two (the closed loops may be between calls)."""
        pin = (REPLICA_HEADER, replica_value(self.victim))
        request = t2i_request(steps=PROBE_STEPS)
        started = time.monotonic()
        stream = self.stub.StreamTextToImage(request, metadata=(pin,), timeout=30)
        early = early_unary(channel)(request, metadata=(pin, EARLY), timeout=30)
        assert (await stream.read()).WhichOneof("event") == "accepted"
        assert dict(await early.initial_metadata())[JOB_ID]
        for kind, call, read in (("stream", stream, 1), ("early", early, 0)):
            self._tasks.append(asyncio.create_task(self._finish(kind, call, read, started)))

    async def _finish(self, kind: str, call: Any, read: int, started: float) -> None:
        messages, error = read, None
        try:
            while await call.read() is not grpc.aio.EOF:
                messages += 1
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            code, error = exc.code(), exc
        self.outcomes.append(
            Outcome(kind, started, time.monotonic(), code, "", self.victim, messages, error)
        )

    def served_by(self, since: float) -> set[str]:
        return {o.replica for o in self.outcomes if o.started >= since and o.replica}

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), timeout=60)


async def whole(stack: Stack) -> None:
    """Both replicas in rotation and taking plain calls."""
    for address in addresses(stack):
        await until(
            lambda a=address: in_rotation(host_status(stack.admin_url, "t2i", a)), 60, "rotation"
        )


def early_unary(channel: grpc.aio.Channel) -> Any:
    """TextToImage read as a stream (the same bytes on the wire): grpc.aio hands out a unary
    call's headers only with its response, a stream's as they arrive."""
    return channel.unary_stream(
        "/mmserve.t2i.v1.ImageGenerationService/TextToImage",
        request_serializer=t2i_pb2.TextToImageRequest.SerializeToString,
        response_deserializer=t2i_pb2.TextToImageResponse.FromString,
    )


def cut(load: Load, lost_at: float, victim: str) -> list[Outcome]:
    """Calls that were in flight on the lost replica and failed."""
    return [
        o
        for o in load.outcomes
        if o.started < lost_at < o.ended and o.on(victim) and o.code != grpc.StatusCode.OK
    ]


def summary(load: Load) -> dict[str, Counter[str]]:
    found: dict[str, Counter[str]] = {}
    for o in load.outcomes:
        found.setdefault(o.kind, Counter())[o.code.name] += 1
    return found


def edge_retries(stack: Stack) -> int:
    """Calls Envoy retried on another t2i replica so far (its cluster counter)."""
    url = f"{stack.admin_url}/stats?filter=^cluster\\.t2i\\.upstream_rq_retry$"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    found = re.search(r"upstream_rq_retry: (\d+)", text)
    return int(found.group(1)) if found else 0


def report(what: str, load: Load, lost_at: float, victim: str, retries: int) -> None:
    lost = cut(load, lost_at, victim)
    slowest = max((o.ended - lost_at for o in lost), default=0.0)
    print(
        f"{what}: {dict(summary(load))}; cut on the lost replica: "
        f"{[(o.kind, o.code.name) for o in lost]} within {slowest:.2f} s; "
        f"retried by the edge: {retries}"
    )


def stopped_reason(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a rich status (empty when there is none)."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return info.reason
    return ""


async def lose_a_replica(pair: Stack, how: signal.Signals) -> tuple[Load, float, str]:
    """Runs the load, loses the first replica the way `how` says, keeps the load on the
    survivor for a while, then stops it and brings the replica back."""
    await whole(pair)
    victim, survivor = addresses(pair)
    retries_before = await asyncio.to_thread(edge_retries, pair)
    async with grpc.aio.insecure_channel(pair.address) as channel:
        load = Load(t2i_pb2_grpc.ImageGenerationServiceStub(channel), victim)
        load.start()
        try:
            began = time.monotonic()
            await until(
                lambda: load.served_by(began) >= {victim, survivor}, 15, "both replicas serve"
            )
            await load.probe(channel)
            child = pair.group("t2i").children[0]
            lost_at = time.monotonic()
            child.signal(how)
            code = await asyncio.to_thread(child.wait, 30)
            if how == signal.SIGTERM:
                assert code == 0, child.tail()
            settled = time.monotonic()
            # One device per replica, streams hold it for seconds: calls queue on the survivor.
            await until(lambda: load.served_by(settled), 20, "calls after the loss are served")
            await asyncio.sleep(1.0)
        finally:
            await load.stop()
    assert load.served_by(settled) == {survivor}
    retries = await asyncio.to_thread(edge_retries, pair) - retries_before
    report(how.name, load, lost_at, victim, retries)
    pair.start_replica("t2i", 0)
    return load, lost_at, victim


async def test_unary_job_id_header_comes_with_the_result_unless_asked_early(pair: Stack) -> None:
    await whole(pair)
    async with grpc.aio.insecure_channel(pair.address) as channel:
        # The unary method read as a stream: grpc hands out a stream's headers on arrival.
        method = early_unary(channel)
        # Not asked: nothing arrives while the 2 s job runs; the id comes with the result,
        # in the headers and in the trailers.
        call = method(t2i_request(steps=20), timeout=30)
        headers = asyncio.ensure_future(call.initial_metadata())
        done, _ = await asyncio.wait({headers}, timeout=0.5)
        assert not done, "response headers went out before the result"
        replies = [reply async for reply in call]
        assert len(replies) == 1
        job_id = dict(await headers)[JOB_ID]
        assert dict(await call.trailing_metadata())[JOB_ID] == job_id
        # Asked: the id arrives while the job runs (to cancel it from elsewhere).
        early = method(t2i_request(steps=20), metadata=(EARLY,), timeout=30)
        early_id = dict(await early.initial_metadata())[JOB_ID]
        assert not early.done()
        replies = [reply async for reply in early]
        assert dict(await early.trailing_metadata())[JOB_ID] == early_id != job_id
        # A failed call carries the id of the job it ran in its trailers.
        stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
        failing = stub.TextToImage(t2i_request(prompt="fail", steps=2), timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await failing
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert dict(caught.value.trailing_metadata() or ())[JOB_ID]


async def test_sigkill_loses_no_unary_call(pair: Stack) -> None:
    load, killed_at, victim = await lose_a_replica(pair, signal.SIGKILL)
    unary = [o for o in load.outcomes if o.kind == "unary"]
    assert len(unary) >= 5
    failed = [(o.code, o.details) for o in unary if o.code != grpc.StatusCode.OK]
    assert not failed, failed
    # Cut after their headers went out: the pinned stream and the early-id call at least.
    lost = cut(load, killed_at, victim)
    assert {o.kind for o in lost} >= {"stream", "early"}, lost
    for outcome in lost:
        # Envoy can only reset a stream whose headers it relayed; gRPC reports the reset as
        # INTERNAL "RST_STREAM" (no Envoy option maps it to a status; docs/clients.md).
        assert outcome.error is not None
        assert outcome.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL), outcome
        if outcome.code == grpc.StatusCode.INTERNAL:
            assert "RST_STREAM" in outcome.details, outcome.details
        # The SDK reads it as what it is: the replica was lost; retry.
        mapped = from_rpc_error(outcome.error)
        assert mapped.code == grpc.StatusCode.UNAVAILABLE
        assert "lost" in mapped.message or outcome.code == grpc.StatusCode.UNAVAILABLE
        if outcome.replica and outcome.code == grpc.StatusCode.INTERNAL:
            assert f"lost replica {victim}" in mapped.message, mapped.message
    # Nothing else failed: every other call, before or after the kill, succeeded.
    others = [o for o in load.outcomes if o.code != grpc.StatusCode.OK and o not in lost]
    assert not others, [(o.kind, o.code, o.details) for o in others]


async def test_drain_with_short_grace_loses_no_unary_call(pair: Stack) -> None:
    load, drained_at, victim = await lose_a_replica(pair, signal.SIGTERM)
    unary = [o for o in load.outcomes if o.kind == "unary"]
    assert len(unary) >= 5
    failed = [(o.code, o.details) for o in unary if o.code != grpc.StatusCode.OK]
    assert not failed, failed
    lost = cut(load, drained_at, victim)
    assert "stream" in {o.kind for o in lost}, lost
    for outcome in lost:
        # The replica ends what its grace did not cover itself: UNAVAILABLE, named, retryable.
        assert outcome.error is not None
        assert outcome.code == grpc.StatusCode.UNAVAILABLE, (outcome.code, outcome.details)
        assert "stopped before the job finished" in outcome.details, outcome.details
        assert stopped_reason(outcome.error) == "ReplicaStopped"
        if outcome.kind == "stream":
            assert outcome.messages >= 1  # it was cut mid-stream, not refused
    others = [o for o in load.outcomes if o.code != grpc.StatusCode.OK and o not in lost]
    assert not others, [(o.kind, o.code, o.details) for o in others]


async def go_load_losing_a_replica(
    pair: Stack, binary: Path, how: signal.Signals
) -> dict[str, Any]:
    """The Go client's closed-loop load (tests/e2e/go) while the first replica is lost."""
    await whole(pair)
    victim = addresses(pair)[0]
    seconds = 6.0
    command = [str(binary), "-addr", pair.address, "-load", str(seconds)]
    command += ["-steps", str(UNARY_STEPS), "-stream-steps", str(STREAM_STEPS)]
    command += ["-pin", replica_value(victim)]
    run = asyncio.create_task(
        asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, timeout=90, check=False
        )
    )
    # Past the first streams' middle: the pinned one is mid-stream on the victim.
    await asyncio.sleep(1.5 + STREAM_STEPS * STEP_SECONDS / 2)
    child = pair.group("t2i").children[0]
    child.signal(how)
    code = await asyncio.to_thread(child.wait, 30)
    if how == signal.SIGTERM:
        assert code == 0, child.tail()
    proc = await run
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    print(f"Go client, {how.name}: {result}")
    pair.start_replica("t2i", 0)
    return result


async def test_go_client_loses_no_unary_call_to_sigkill(pair: Stack, edgeclient: Path) -> None:  # noqa: F811
    result = await go_load_losing_a_replica(pair, edgeclient, signal.SIGKILL)
    assert set(result["codes"]["unary"]) == {"OK"}, result
    assert result["codes"]["unary"]["OK"] >= 4
    failed = result["failed"]
    assert failed, "the stream pinned to the killed replica was cut"
    for stream in failed:
        assert stream["kind"] == "stream", stream
        # grpc-go reports Envoy's reset as Internal "... RST_STREAM ..." (docs/clients.md).
        assert stream["code"] in ("Internal", "Unavailable"), stream
        if stream["code"] == "Internal":
            assert "RST_STREAM" in stream["message"], stream


async def test_go_client_loses_no_unary_call_to_a_drain(pair: Stack, edgeclient: Path) -> None:  # noqa: F811
    result = await go_load_losing_a_replica(pair, edgeclient, signal.SIGTERM)
    assert set(result["codes"]["unary"]) == {"OK"}, result
    failed = result["failed"]
    assert failed, "the stream pinned to the drained replica was cut"
    for stream in failed:
        assert stream["kind"] == "stream", stream
        assert stream["code"] == "Unavailable", stream
        assert "stopped before the job finished" in stream["message"], stream
        assert stream["events"] >= 1  # past its first event: cut, not refused


# connect-web's grpc-web transport (what the playground and browser apps use) on Node's fetch:
# one pinned stream, its first event, then how it ends, as one JSON line each.
GRPC_WEB_STREAM = """
import { readFileSync } from "node:fs";
const [modules, descriptors, edge, pin, steps] = process.argv.slice(1);
const load = (name, sub = "") => import(`${modules}/${name}/dist/esm/${sub}index.js`);
const { createClient, ConnectError, Code } = await load("@connectrpc/connect");
const { createGrpcWebTransport } = await load("@connectrpc/connect-web");
const { fromBinary, createFileRegistry } = await load("@bufbuild/protobuf");
const { FileDescriptorSetSchema } = await load("@bufbuild/protobuf", "wkt/");
const set = fromBinary(FileDescriptorSetSchema, readFileSync(descriptors));
const service = createFileRegistry(set).getService("mmserve.t2i.v1.ImageGenerationService");
const transport = createGrpcWebTransport({ baseUrl: edge, useBinaryFormat: true });
const client = createClient(service, transport);
const request = { params: { prompt: "web", numInferenceSteps: Number(steps), width: 8 } };
let events = 0;
try {
  const options = { headers: { "mmserve-replica": pin } };
  for await (const ev of client.streamTextToImage(request, options)) {
    if (events++ === 0) console.log(JSON.stringify({ first: ev.event.case }));
  }
  console.log(JSON.stringify({ events, code: "OK" }));
} catch (e) {
  const err = ConnectError.from(e);
  console.log(JSON.stringify({ events, code: Code[err.code], message: err.rawMessage }));
}
"""


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "drain"])
async def test_grpc_web_stream_cut_with_its_replica(
    pair: Stack, how: signal.Signals, tmp_path: Path
) -> None:
    """What a browser-style client (connect-web over fetch) sees when the replica under its
    stream is lost: from a drain, UNAVAILABLE with the replica's message; from a kill, the
    fetch body breaks and connect-web reports UNKNOWN (docs/clients.md)."""
    node, modules = shutil.which("node"), REPO / "tools" / "node_modules"
    if node is None or not (modules / "@connectrpc" / "connect-web").is_dir():
        pytest.fail("node and tools/node_modules are needed: `make install-node`", pytrace=False)
    descriptors = build_descriptor_set(tmp_path / "mmserve.binpb")
    await whole(pair)
    victim = addresses(pair)[0]
    args = [str(modules), str(descriptors), f"http://{pair.address}", replica_value(victim)]
    proc = await asyncio.create_subprocess_exec(
        node,
        "--input-type=module",
        "-e",
        GRPC_WEB_STREAM,
        "--",
        *args,
        str(PROBE_STEPS),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
    assert first == {"first": "accepted"}
    child = pair.group("t2i").children[0]
    child.signal(how)
    end = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
    await asyncio.wait_for(proc.wait(), 30)
    await asyncio.to_thread(child.wait, 30)
    pair.start_replica("t2i", 0)
    print(f"grpc-web stream, {how.name}: {end}")
    assert end["events"] >= 1
    if how == signal.SIGTERM:
        assert end["code"] == "Unavailable", end
        assert "stopped before the job finished" in end["message"], end
    else:
        # The fetch body breaks; connect-web has no status to read and says UNKNOWN.
        assert end["code"] == "Unknown", end


def test_at_most_once_methods_exist() -> None:
    """The edge's list of methods it must never run twice names real unary methods."""
    unary = {name: set(spec.unary_methods) for name, spec in CAPABILITIES.items()}
    for name in CAPABILITIES:
        assert set(AT_MOST_ONCE_EVERYWHERE) <= unary[name], name
    for name, methods in AT_MOST_ONCE.items():
        assert set(methods) <= unary[name], (name, set(methods) - unary[name])
