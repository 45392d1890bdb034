"""Micro-batching: many concurrent clients get their own results, large requests are split into
device-sized parts, and an out-of-memory forward pass halves the pass size and carries on."""

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
    async with served("tiny:clip", *argv) as srv:
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


async def test_out_of_memory_halves_the_pass_and_carries_on(reference) -> None:
    """The device's memory is simulated: a forward pass of more than 2 images raises the
    error torch raises on a full GPU. The model itself is real."""
    async with served("tiny:clip", "--max-device-batch", "8") as srv:
        engine = srv.server.runtime.engine
        real_forward = engine._image_features
        sizes: list[int] = []

        def limited(tensors, poolings):
            sizes.append(len(poolings))
            if len(poolings) > 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return real_forward(tensors, poolings)

        engine._image_features = limited
        images = [noise_image(500 + seed) for seed in range(7)]
        reply = await srv.stub.EmbedImages(
            vision_pb2.EmbedImagesRequest(images=[image_pb(i) for i in images], normalize=False),
            timeout=60,
        )
        np.testing.assert_allclose(vectors(reply.embeddings), reference.images(images), atol=ATOL)
        assert sizes == [7, 4, 2, 2, 2, 1]  # 7 and 4 fail; then passes of 2, 2, 2 and 1
        assert engine.device_batch == 2  # later batches start from the size that fitted
        # A single image that does not fit fails its request with RESOURCE_EXHAUSTED...
        engine._image_features = lambda tensors, poolings: limited(tensors, ["cls"] * 3)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await srv.stub.EmbedImages(
                vision_pb2.EmbedImagesRequest(images=[image_pb(images[0])]), timeout=60
            )
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # ...and the service serves the next request once memory is back.
        engine._image_features = real_forward
        reply = await srv.stub.EmbedImages(
            vision_pb2.EmbedImagesRequest(images=[image_pb(images[0])], normalize=False),
            timeout=60,
        )
        np.testing.assert_allclose(
            vectors(reply.embeddings), reference.images(images[:1]), atol=ATOL
        )


async def test_a_batch_waits_for_images_still_being_decoded() -> None:
    """With max_arrival_wait_ms, the device does not start a batch with the first decoded image
    of a burst while the others are still being decoded: all four share one forward pass."""
    argv = ["--max-batch-wait-ms", "0", "--max-arrival-wait-ms", "5000"]
    burst = [noise_image(300 + seed, (800, 600)) for seed in range(4)]
    async with served("tiny:clip", *argv) as srv:

        async def embed(image):
            request = vision_pb2.EmbedImagesRequest(images=[image_pb(image)])
            return await srv.stub.EmbedImages(request, timeout=60)

        replies = await asyncio.gather(*(embed(image) for image in burst))
    assert [reply.usage.batch_size for reply in replies] == [4, 4, 4, 4]
