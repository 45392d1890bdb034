"""Micro-batching: many concurrent clients get their own results, large requests are split into
device-sized parts, and an out-of-memory micro-batch is split and the batch size lowered."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import pytest_asyncio
import torch

from mmserve.vision.v1 import vision_pb2
from tests.vision.helpers import ATOL, Reference, Served, image_pb, noise_image, served, vectors

pytestmark = pytest.mark.asyncio(loop_scope="module")

CLIENTS = 12
IMAGES = [noise_image(200 + seed, (40 + seed, 40)) for seed in range(CLIENTS)]
COLORS = ("red", "green", "blue", "yellow")
TEXTS = [f"a photo of {n} cats on a {COLORS[n % 4]} sofa" for n in range(CLIENTS)]


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference("clip")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def clip() -> Served:
    # A generous wait makes sure concurrent requests meet in one micro-batch even on a loaded
    # machine; the device runs at most 4 items per forward pass, so batches are also split.
    argv = ["--max-batch-wait-ms", "200", "--max-batch-size", "16", "--max-device-batch", "4"]
    async with served("builtin:clip", *argv) as srv:
        yield srv


async def test_concurrent_clients_get_their_own_results(clip: Served, reference) -> None:
    async def embed_image(image):
        request = vision_pb2.EmbedImagesRequest(images=[image_pb(image)], normalize=False)
        return await clip.stub.EmbedImages(request, timeout=60)

    async def embed_text(text):
        request = vision_pb2.EmbedTextsRequest(texts=[text], normalize=False)
        return await clip.stub.EmbedTexts(request, timeout=60)

    replies = await asyncio.gather(
        *(embed_image(image) for image in IMAGES), *(embed_text(text) for text in TEXTS)
    )
    image_replies, text_replies = replies[:CLIENTS], replies[CLIENTS:]
    expected_images = reference.images(IMAGES)
    expected_texts = reference.texts(TEXTS)
    for index, reply in enumerate(image_replies):
        np.testing.assert_allclose(vectors(reply.embeddings)[0], expected_images[index], atol=ATOL)
    for index, reply in enumerate(text_replies):
        np.testing.assert_allclose(vectors(reply.embeddings)[0], expected_texts[index], atol=ATOL)
    # The expected vectors are far apart, so equality above rules out any mix-up.
    assert np.min(np.linalg.norm(expected_images[:1] - expected_images[1:], axis=1)) > 0.01
    assert max(r.usage.batch_size for r in image_replies) > 1
    assert max(r.usage.batch_size for r in text_replies) > 1


async def test_large_request_split_into_device_sized_parts(clip: Served, reference) -> None:
    images = [noise_image(300 + seed) for seed in range(10)]  # 3 parts of at most 4
    reply = await clip.stub.EmbedImages(
        vision_pb2.EmbedImagesRequest(images=[image_pb(i) for i in images], normalize=False),
        timeout=60,
    )
    np.testing.assert_allclose(vectors(reply.embeddings), reference.images(images), atol=ATOL)


async def test_many_texts_split_into_parts_keep_order_flags_and_tokens(
    clip: Served, reference
) -> None:
    texts = [f"a photo of {n} dogs" for n in range(10)]  # 3 parts of at most 4
    texts[6] = "a very long caption about a cat " * 20  # about 140 tokens > 77
    reply = await clip.stub.EmbedTexts(
        vision_pb2.EmbedTextsRequest(texts=texts, normalize=False), timeout=60
    )
    np.testing.assert_allclose(vectors(reply.embeddings), reference.texts(texts), atol=ATOL)
    assert list(reply.truncated) == [i == 6 for i in range(10)]
    tokenizer = reference.processor.tokenizer
    expected = sum(len(tokenizer(t, truncation=True)["input_ids"]) for t in texts)
    assert reply.usage.input_tokens == expected


async def test_concurrent_multi_image_requests_keep_order(clip: Served, reference) -> None:
    groups = [[noise_image(400 + 10 * g + i) for i in range(g + 1)] for g in range(5)]

    async def embed(group):
        request = vision_pb2.EmbedImagesRequest(images=[image_pb(i) for i in group])
        return await clip.stub.EmbedImages(request, timeout=60)

    replies = await asyncio.gather(*(embed(group) for group in groups))
    for group, reply in zip(groups, replies, strict=True):
        expected = reference.images(group)
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        np.testing.assert_allclose(vectors(reply.embeddings), expected, atol=ATOL)


async def test_out_of_memory_splits_the_batch_and_lowers_its_size(reference) -> None:
    """The device's memory is simulated: a forward pass of more than 2 images raises the
    error torch raises on a full GPU. The model itself is real. The runtime's executor owns the
    policy: it splits the failing micro-batch until its halves fit and lowers the batch size
    for later batches; the engine does not catch the error itself."""
    argv = ["--max-batch-wait-ms", "500", "--max-batch-size", "16"]
    async with served("builtin:clip", *argv) as srv:
        engine = srv.server.runtime.engine
        executor = srv.server.runtime.executor
        real_forward = engine._image_features
        sizes: list[int] = []

        def limited(tensors, poolings):
            sizes.append(len(poolings))
            if len(poolings) > 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return real_forward(tensors, poolings)

        async def embed(images):
            request = vision_pb2.EmbedImagesRequest(
                images=[image_pb(i) for i in images], normalize=False
            )
            return await srv.stub.EmbedImages(request, timeout=60)

        engine._image_features = limited
        images = [noise_image(500 + seed) for seed in range(7)]
        # Seven callers meet in one micro-batch (they queue within its 500 ms wait).
        replies = await asyncio.gather(*(embed([image]) for image in images))
        got = np.concatenate([vectors(reply.embeddings) for reply in replies])
        np.testing.assert_allclose(got, reference.images(images), atol=ATOL)
        assert max(sizes) > 2  # some pass ran out of memory...
        assert sum(size for size in sizes if size <= 2) == 7  # each image once, in a pass that fit
        assert max(reply.usage.batch_size for reply in replies) <= 2  # ...and was split
        assert executor.effective_max_batch("embed_images") == 2  # later batches fit at once
        sizes.clear()
        await asyncio.gather(*(embed([image]) for image in images[:4]))
        assert sizes
        assert max(sizes) <= 2
        # A single image that does not fit fails its request with RESOURCE_EXHAUSTED...
        engine._image_features = lambda tensors, poolings: limited(tensors, ["cls"] * 3)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await embed(images[:1])
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # ...and the service serves the next request once memory is back.
        engine._image_features = real_forward
        reply = await embed(images[:1])
        np.testing.assert_allclose(
            vectors(reply.embeddings), reference.images(images[:1]), atol=ATOL
        )


async def test_a_batch_waits_for_images_still_being_decoded() -> None:
    """With max_arrival_wait_ms, the device does not start a batch with the first decoded image
    of a burst while the others are still being decoded: all four share one forward pass."""
    argv = ["--max-batch-wait-ms", "0", "--max-arrival-wait-ms", "5000"]
    burst = [noise_image(300 + seed, (800, 600)) for seed in range(4)]
    async with served("builtin:clip", *argv) as srv:

        async def embed(image):
            request = vision_pb2.EmbedImagesRequest(images=[image_pb(image)])
            return await srv.stub.EmbedImages(request, timeout=60)

        replies = await asyncio.gather(*(embed(image) for image in burst))
    assert [reply.usage.batch_size for reply in replies] == [4, 4, 4, 4]
