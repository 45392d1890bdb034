"""Per-key rate limits hold under concurrency: N callers firing at once on several connections
get exactly the bucket's worth of calls (burst plus what refills meanwhile), the rest get
RESOURCE_EXHAUSTED with RetryInfo; each key has its own bucket; calls with a wrong key spend
no key's budget; without auth, callers from one host share one bucket."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest

from mmserve.t2i.v1 import t2i_pb2, t2i_pb2_grpc
from services.runtime.server import ServiceServer
from tests.reliability.faults.faulty_service import CAPABILITY
from tests.reliability.security.conftest import Keys
from tests.support.rpc import retry_info
from tests.support.servers import running_server

RATE = 2.0  # tokens per second
BURST = 10
CALLERS = 60  # concurrent calls per key, spread over CONNECTIONS channels
CONNECTIONS = 4


@pytest.fixture
async def limited(keys: Keys) -> AsyncIterator[ServiceServer]:
    argv = [
        "--api-keys", keys.flag,
        "--rate-limit-per-second", str(RATE), "--rate-limit-burst", str(BURST),
    ]  # fmt: skip
    async with running_server(CAPABILITY, argv) as server:
        yield server


async def burst_of_calls(
    target: str, metadata: tuple[tuple[str, str], ...], callers: int = CALLERS
) -> tuple[Counter[str], float, list[grpc.aio.AioRpcError]]:
    """`callers` GetModelInfo calls at once over CONNECTIONS connections: their codes, how
    long the burst took, and the rejections."""
    channels = [grpc.aio.insecure_channel(target) for _ in range(CONNECTIONS)]
    try:
        stubs = [t2i_pb2_grpc.ImageGenerationServiceStub(c) for c in channels]
        for channel in channels:  # connect first, so the burst is not spread by handshakes
            await asyncio.wait_for(channel.channel_ready(), 10)
        started = time.monotonic()
        calls = [
            stubs[i % CONNECTIONS].GetModelInfo(
                t2i_pb2.GetModelInfoRequest(), metadata=metadata, timeout=10
            )
            for i in range(callers)
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        elapsed = time.monotonic() - started
    finally:
        for channel in channels:
            await channel.close()
    codes: Counter[str] = Counter()
    rejections = []
    for result in results:
        if isinstance(result, grpc.aio.AioRpcError):
            codes[result.code().name] += 1
            rejections.append(result)
        else:
            assert isinstance(result, t2i_pb2.GetModelInfoResponse), result
            codes["OK"] += 1
    return codes, elapsed, rejections


def allowed(elapsed: float) -> int:
    """The most calls a full bucket can pass in `elapsed` seconds."""
    return BURST + int(RATE * elapsed) + 1


async def test_concurrent_callers_of_one_key_get_the_bucket_and_no_more(
    limited: ServiceServer, keys: Keys
) -> None:
    target = f"127.0.0.1:{limited.port}"
    codes, elapsed, rejections = await burst_of_calls(target, Keys.bearer(keys.alice))
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert BURST <= codes["OK"] <= allowed(elapsed), (codes, elapsed)
    for error in rejections:
        info = retry_info(error)
        assert info is not None
        delay = info.retry_delay.ToTimedelta().total_seconds()
        assert 0 < delay <= 1 / RATE + 0.01  # the wait for the next token, not more


async def test_keys_have_their_own_buckets_even_at_the_same_moment(
    limited: ServiceServer, keys: Keys
) -> None:
    target = f"127.0.0.1:{limited.port}"
    (alice, a_elapsed, _), (bob, b_elapsed, _) = await asyncio.gather(
        burst_of_calls(target, Keys.bearer(keys.alice)),
        burst_of_calls(target, Keys.bearer(keys.bob)),
    )
    assert BURST <= alice["OK"] <= allowed(a_elapsed), alice
    assert BURST <= bob["OK"] <= allowed(b_elapsed), bob


async def test_wrong_keys_spend_no_budget(limited: ServiceServer, keys: Keys) -> None:
    target = f"127.0.0.1:{limited.port}"
    wrong, _, _ = await burst_of_calls(target, Keys.bearer(keys.wrong))
    assert wrong == Counter({"UNAUTHENTICATED": CALLERS})
    # Alice's bucket is untouched by someone hammering with a bad key.
    codes, elapsed, _ = await burst_of_calls(target, Keys.bearer(keys.alice), callers=BURST)
    assert codes == Counter({"OK": BURST}), (codes, elapsed)


async def test_without_auth_one_host_shares_one_bucket() -> None:
    argv = ["--rate-limit-per-second", str(RATE), "--rate-limit-burst", str(BURST)]
    async with running_server(CAPABILITY, argv) as server:
        codes, elapsed, _ = await burst_of_calls(f"127.0.0.1:{server.port}", ())
    # Four connections (four client ports) from 127.0.0.1 are one caller.
    assert BURST <= codes["OK"] <= allowed(elapsed), (codes, elapsed)
    assert codes["RESOURCE_EXHAUSTED"] == CALLERS - codes["OK"]
