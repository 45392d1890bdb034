"""Bad requests get INVALID_ARGUMENT with a BadRequest field violation naming the field, on
both RPCs, and never take a queue slot."""

from __future__ import annotations

import grpc
import pytest
import pytest_asyncio

from mmserve.common.v1 import chat_pb2
from mmserve.vl.v1 import vl_pb2
from services.vl.capability import CAPABILITY
from tests.support.servers import running_server
from tests.vl.helpers import (
    ASSISTANT,
    SYSTEM,
    USER,
    collect,
    image,
    message,
    picture,
    request,
    stub,
    text,
    violations,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_IMAGES = 2
SMALL = picture(32, 32, seed=5)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vl():
    async with running_server(CAPABILITY, ["--max-images", str(MAX_IMAGES)]) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield stub(channel)


def _png_truncated() -> bytes:
    data = image(SMALL).image.data
    return data[: len(data) // 2]


BAD_REQUESTS = {
    "no messages": (request(), "messages"),
    "unspecified role": (
        request(message(chat_pb2.ROLE_UNSPECIFIED, text("hi"))),
        "messages[0].role",
    ),
    "system not first": (
        request(message(USER, text("hi")), message(SYSTEM, text("be nice")), message(USER)),
        "messages[1].role",
    ),
    "last message not from user": (
        request(message(USER, text("hi")), message(ASSISTANT, text("hello"))),
        "messages[1].role",
    ),
    "image in an assistant message": (
        request(message(ASSISTANT, image(SMALL)), message(USER, text("and?"))),
        "messages[0].content[0].image",
    ),
    "message without content": (request(message(USER)), "messages[0].content"),
    "empty content part": (
        request(message(USER, vl_pb2.ContentPart(), text("hi"))),
        "messages[0].content[0]",
    ),
    "too many images": (
        request(message(USER, image(SMALL), text("a")), message(USER, image(SMALL), image(SMALL))),
        "messages[1].content[1].image",
    ),
    "not an image": (
        request(message(USER, image(b"GIF? no, just text"), text("what?"))),
        "messages[0].content[0].image.data",
    ),
    "truncated image": (
        request(message(USER, image(_png_truncated()), text("what?"))),
        "messages[0].content[0].image.data",
    ),
    "too elongated for the model": (
        request(message(USER, image(picture(1000, 4, seed=6)), text("what?"))),
        "messages[0].content[0].image",
    ),
    "uri without an allowed prefix": (
        request(message(USER, vl_pb2.ContentPart(image={"uri": "file:///etc/passwd"}), text("x"))),
        "messages[0].content[0].image.uri",
    ),
    "temperature out of range": (
        request(message(USER, text("hi")), temperature=3.0),
        "sampling.temperature",
    ),
    "zero max_new_tokens": (
        request(message(USER, text("hi")), max_new_tokens=0),
        "sampling.max_new_tokens",
    ),
    "empty stop sequence": (
        request(message(USER, text("hi")), stop=["ok", ""]),
        "sampling.stop[1]",
    ),
    "resolution above the service bound": (
        request(
            message(USER, image(SMALL), text("hi")),
            resolution=vl_pb2.ImageResolution(max_pixels=10**9),
        ),
        "image_resolution.max_pixels",
    ),
    "resolution min above max": (
        request(
            message(USER, image(SMALL), text("hi")),
            resolution=vl_pb2.ImageResolution(min_pixels=200_000, max_pixels=100_000),
        ),
        "image_resolution.min_pixels",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_bad_request_names_the_field(vl, case: str) -> None:
    bad, field = BAD_REQUESTS[case]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vl.Chat(bad, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(caught.value), violations(caught.value)


async def test_streams_refuse_bad_requests_the_same_way(vl) -> None:
    bad, field = BAD_REQUESTS["system not first"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(vl.StreamChat(bad, timeout=60))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(caught.value)


async def test_all_violations_come_together(vl) -> None:
    bad = request(message(SYSTEM, text("x")), message(SYSTEM, image(SMALL)), temperature=-1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vl.Chat(bad, timeout=60)
    assert set(violations(caught.value)) >= {
        "messages[1].role",
        "messages[1].content[0].image",
        "sampling.temperature",
    }


async def test_oversized_prompt_names_the_token_counts(vl) -> None:
    info = await vl.GetModelInfo(vl_pb2.GetModelInfoRequest(), timeout=30)
    context = info.limits.max_context_tokens
    bad = request(message(USER, image(SMALL), text("word " * context)))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vl.Chat(bad, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    description = violations(caught.value)["messages"]
    assert f"context is {context} tokens" in description
    prompt_tokens = int(description.split("the prompt is ")[1].split()[0])
    assert prompt_tokens > context
    # The service still answers a prompt that fits.
    fits = request(message(USER, image(SMALL), text("word " * 10)), max_new_tokens=2)
    assert (await vl.Chat(fits, timeout=60)).usage.output_tokens >= 1
