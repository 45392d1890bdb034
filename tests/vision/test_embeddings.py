"""Served CLIP embeddings against the same model called in-process."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import pytest_asyncio

from mmserve.common.v1 import job_pb2, model_pb2
from mmserve.vision.v1 import vision_pb2
from tests.vision.helpers import (
    ATOL,
    Reference,
    Served,
    image_pb,
    noise_image,
    served,
    unit,
    vectors,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

IMAGES = [noise_image(seed, (40 + 8 * seed, 48 - 2 * seed)) for seed in range(5)]
TEXTS = ["a photo of a cat", "a diagram", "two dogs playing in the snow at night"]


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference("clip")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def clip() -> Served:
    async with served("builtin:clip") as srv:
        yield srv


async def test_image_embeddings_equal_in_process_model(clip: Served, reference) -> None:
    reply = await clip.stub.EmbedImages(
        vision_pb2.EmbedImagesRequest(images=[image_pb(i) for i in IMAGES], normalize=False),
        timeout=30,
    )
    expected = reference.images(IMAGES)
    assert reply.dimension == expected.shape[1] == 16
    np.testing.assert_allclose(vectors(reply.embeddings), expected, atol=ATOL)
    assert reply.usage.run_seconds > 0
    assert reply.usage.batch_size >= 1


async def test_batch_of_n_equals_n_single_requests(clip: Served) -> None:
    batch = await clip.stub.EmbedImages(
        vision_pb2.EmbedImagesRequest(images=[image_pb(i) for i in IMAGES]), timeout=30
    )
    singles = [
        await clip.stub.EmbedImages(vision_pb2.EmbedImagesRequest(images=[image_pb(i)]), timeout=30)
        for i in IMAGES
    ]
    np.testing.assert_allclose(
        vectors(batch.embeddings),
        np.concatenate([vectors(s.embeddings) for s in singles]),
        atol=ATOL,
    )


async def test_normalized_by_default_and_unit_length(clip: Served, reference) -> None:
    reply = await clip.stub.EmbedImages(
        vision_pb2.EmbedImagesRequest(images=[image_pb(i) for i in IMAGES]), timeout=30
    )
    got = vectors(reply.embeddings)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, unit(reference.images(IMAGES)), atol=ATOL)
    texts = await clip.stub.EmbedTexts(vision_pb2.EmbedTextsRequest(texts=TEXTS), timeout=30)
    np.testing.assert_allclose(np.linalg.norm(vectors(texts.embeddings), axis=1), 1.0, atol=1e-5)


async def test_text_embeddings_equal_in_process_model(clip: Served, reference) -> None:
    reply = await clip.stub.EmbedTexts(
        vision_pb2.EmbedTextsRequest(texts=TEXTS, normalize=False), timeout=30
    )
    np.testing.assert_allclose(vectors(reply.embeddings), reference.texts(TEXTS), atol=ATOL)
    assert list(reply.truncated) == [False, False, False]
    # "a photo of a cat" is 7 CLIP tokens with its start and end tokens.
    assert reply.usage.input_tokens == sum(
        len(reference.processor.tokenizer(t)["input_ids"]) for t in TEXTS
    )


async def test_long_text_is_truncated_and_says_so(clip: Served, reference) -> None:
    long_text = "a very long caption about a cat " * 20  # about 140 tokens > 77
    reply = await clip.stub.EmbedTexts(
        vision_pb2.EmbedTextsRequest(texts=["a cat", long_text], normalize=False), timeout=30
    )
    assert list(reply.truncated) == [False, True]
    np.testing.assert_allclose(
        vectors(reply.embeddings), reference.texts(["a cat", long_text]), atol=ATOL
    )


async def test_job_id_header_and_get_job(clip: Served) -> None:
    call = clip.stub.EmbedImages(vision_pb2.EmbedImagesRequest(images=[image_pb(IMAGES[0])]))
    await call
    job_id = dict(await call.initial_metadata())["mmserve-job-id"]
    job = await clip.stub.GetJob(job_pb2.GetJobRequest(job_id=job_id), timeout=10)
    assert job.job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert job.job.kind == "embed_images"


async def test_model_info_reports_family_limits_and_dimension(clip: Served) -> None:
    info = await clip.stub.GetModelInfo(vision_pb2.GetModelInfoRequest(), timeout=10)
    assert info.model_info.family == "clip"
    assert info.model_info.architecture == "CLIPModel"
    assert info.model_info.state == model_pb2.MODEL_STATE_READY
    assert info.model_info.max_batch_size == 32
    assert info.embedding_dimension == 16
    assert info.supports_text
    assert info.limits.max_text_tokens == 77
    assert info.limits.image_size == 32
    assert info.limits.max_images_per_request == 256
    assert "classify_zero_shot" in info.model_info.capabilities


async def test_reflection_lists_the_vision_service(clip: Served) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(clip.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    replies = [r async for r in stub.ServerReflectionInfo(iter([request]), timeout=10)]
    names = {s.name for s in replies[0].list_services_response.service}
    assert "mmserve.vision.v1.VisionService" in names


async def test_unknown_pooling_value_is_invalid(clip: Served) -> None:
    request = vision_pb2.EmbedImagesRequest(images=[image_pb(IMAGES[0])], pooling=7)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clip.stub.EmbedImages(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
