"""StreamImageEmbeddings through a real server on the tiny CLIP: vectors equal the model card's
recipe and EmbedImages, in input order, chunk by chunk with progress; images by file URI; other
callers are served during a long stream; cancel (by the call or CancelJob) stops the rest; bad
input names its field."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import pytest_asyncio

from mmserve.common.v1 import job_pb2, media_pb2
from mmserve.vision.v1 import vision_pb2
from tests.vision.helpers import (
    ATOL,
    Reference,
    Served,
    image_pb,
    noise_image,
    png,
    served,
    unit,
    vectors,
    violated_fields,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

IMAGES = [noise_image(300 + seed, (36 + seed % 7, 40)) for seed in range(11)]


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference("clip")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def clip(tmp_path_factory: pytest.TempPathFactory) -> Served:
    folder = tmp_path_factory.mktemp("gallery")
    argv = [
        "--max-device-batch",
        "4",
        "--max-images-per-stream",
        "500",
        "--allowed-uri-prefixes",
        f"file://{folder}/",
    ]
    async with served("builtin:clip", *argv) as srv:
        srv.gallery = folder  # type: ignore[attr-defined]
        yield srv


async def read_all(call) -> list[vision_pb2.StreamImageEmbeddingsResponse]:
    return [event async for event in call]


def stitched(events) -> np.ndarray:
    rows: list[np.ndarray] = []
    for event in events:
        if event.WhichOneof("event") == "embeddings":
            assert event.embeddings.offset == sum(len(r) for r in rows)
            rows.append(vectors(event.embeddings.embeddings))
    return np.concatenate(rows)


async def test_vectors_stream_in_order_with_progress(clip: Served, reference) -> None:
    request = vision_pb2.StreamImageEmbeddingsRequest(images=[image_pb(i) for i in IMAGES])
    events = await read_all(clip.stub.StreamImageEmbeddings(request, timeout=120))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "accepted"
    assert kinds[-1] == "done"
    assert kinds.count("embeddings") == 3  # 11 images in chunks of 4
    progress = [e.progress for e in events if e.WhichOneof("event") == "progress"]
    assert [p.done for p in progress] == [4, 8, 11]
    assert all(p.total == len(IMAGES) for p in progress)
    assert progress[-1].eta_seconds == 0
    done = events[-1].done
    assert done.count == len(IMAGES)
    assert done.dimension == reference.model.config.projection_dim
    assert done.usage.run_seconds > 0
    np.testing.assert_allclose(stitched(events), unit(reference.images(IMAGES)), atol=ATOL)
    # The same vectors as the unary call.
    unary = await clip.stub.EmbedImages(
        vision_pb2.EmbedImagesRequest(images=[image_pb(i) for i in IMAGES]), timeout=60
    )
    np.testing.assert_allclose(stitched(events), vectors(unary.embeddings), atol=ATOL)


async def test_chunk_size_and_raw_vectors(clip: Served, reference) -> None:
    request = vision_pb2.StreamImageEmbeddingsRequest(
        images=[image_pb(i) for i in IMAGES[:5]], normalize=False, chunk_size=2
    )
    events = await read_all(clip.stub.StreamImageEmbeddings(request, timeout=120))
    sizes = [len(e.embeddings.embeddings) for e in events if e.WhichOneof("event") == "embeddings"]
    assert sizes == [2, 2, 1]
    np.testing.assert_allclose(stitched(events), reference.images(IMAGES[:5]), atol=ATOL)


async def test_images_by_file_uri(clip: Served, reference) -> None:
    gallery: Path = clip.gallery  # type: ignore[attr-defined]
    uris = []
    for index, image in enumerate(IMAGES[:6]):
        path = gallery / f"{index}.png"
        path.write_bytes(png(image))
        uris.append(media_pb2.Image(uri=path.as_uri()))
    events = await read_all(
        clip.stub.StreamImageEmbeddings(
            vision_pb2.StreamImageEmbeddingsRequest(images=uris), timeout=120
        )
    )
    np.testing.assert_allclose(stitched(events), unit(reference.images(IMAGES[:6])), atol=ATOL)


async def test_other_callers_are_served_during_a_long_stream(clip: Served) -> None:
    many = [image_pb(IMAGES[i % len(IMAGES)]) for i in range(160)]
    call = clip.stub.StreamImageEmbeddings(
        vision_pb2.StreamImageEmbeddingsRequest(images=many), timeout=300
    )
    first_chunk = None
    async for event in call:
        if event.WhichOneof("event") == "embeddings":
            first_chunk = event
            break
    assert first_chunk is not None
    # A small request waits for at most a chunk or two, not for the 40 chunks of the stream.
    started = time.monotonic()
    reply = await clip.stub.EmbedImages(
        vision_pb2.EmbedImagesRequest(images=[image_pb(IMAGES[0])]), timeout=60
    )
    small_seconds = time.monotonic() - started
    assert len(reply.embeddings) == 1
    rest = [event async for event in call]
    assert rest[-1].WhichOneof("event") == "done"
    assert rest[-1].done.count == 160
    progress = [e.progress.done for e in rest if e.WhichOneof("event") == "progress"]
    assert progress[-1] == 160
    # The small call finished while the stream still had most of its chunks to go.
    assert progress[0] < 160 or small_seconds < 5


async def test_cancel_job_stops_the_rest(clip: Served) -> None:
    many = [image_pb(IMAGES[i % len(IMAGES)]) for i in range(200)]
    call = clip.stub.StreamImageEmbeddings(
        vision_pb2.StreamImageEmbeddingsRequest(images=many, chunk_size=1), timeout=300
    )
    seen = 0

    async def read_and_cancel_at_the_second_chunk() -> None:
        nonlocal seen
        async for event in call:
            if event.WhichOneof("event") == "embeddings":
                seen += 1
                if seen == 2:
                    await clip.stub.CancelJob(job_pb2.CancelJobRequest(job_id=event.job_id))

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await read_and_cancel_at_the_second_chunk()
    assert error.value.code() == grpc.StatusCode.CANCELLED
    assert seen < 50


async def test_client_cancel_frees_the_service(clip: Served) -> None:
    many = [image_pb(IMAGES[i % len(IMAGES)]) for i in range(200)]
    call = clip.stub.StreamImageEmbeddings(
        vision_pb2.StreamImageEmbeddingsRequest(images=many, chunk_size=1), timeout=300
    )
    async for event in call:
        if event.WhichOneof("event") == "embeddings":
            call.cancel()
            break
    await asyncio.sleep(0.2)
    reply = await clip.stub.EmbedImages(
        vision_pb2.EmbedImagesRequest(images=[image_pb(IMAGES[1])]), timeout=30
    )
    assert len(reply.embeddings) == 1
    assert clip.server.runtime.executor.queue_depth == 0


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (vision_pb2.StreamImageEmbeddingsRequest(), "images"),
        (
            vision_pb2.StreamImageEmbeddingsRequest(images=[media_pb2.Image(data=b"x")] * 501),
            "images",
        ),
        (
            vision_pb2.StreamImageEmbeddingsRequest(images=[image_pb(IMAGES[0])], pooling=7),
            "pooling",
        ),
    ],
    ids=["empty", "too-many", "pooling"],
)
async def test_bad_requests_name_the_field(clip: Served, request_, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await read_all(clip.stub.StreamImageEmbeddings(request_, timeout=30))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error.value) == [field]


async def test_an_unreadable_image_ends_the_stream_naming_it(clip: Served) -> None:
    images = [image_pb(IMAGES[0])] * 5 + [media_pb2.Image(data=b"not an image")]
    call = clip.stub.StreamImageEmbeddings(
        vision_pb2.StreamImageEmbeddingsRequest(images=images, chunk_size=4), timeout=60
    )
    received = 0

    async def read() -> None:
        nonlocal received
        async for event in call:
            if event.WhichOneof("event") == "embeddings":
                received += len(event.embeddings.embeddings)

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await read()
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error.value) == ["images[5].data"]
    assert received in (0, 4)  # the first chunk may have been sent before the second failed


async def test_model_info_states_the_stream_limit(clip: Served) -> None:
    info = await clip.stub.GetModelInfo(vision_pb2.GetModelInfoRequest(), timeout=10)
    assert info.limits.max_images_per_stream == 500
