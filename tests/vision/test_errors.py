"""Bad requests get the right code and field violation, and the server serves the next one."""

from __future__ import annotations

import grpc
import pytest
import pytest_asyncio

from mmserve.common.v1 import media_pb2
from mmserve.vision.v1 import vision_pb2
from tests.vision.helpers import (
    Served,
    image_item,
    image_pb,
    noise_image,
    png,
    rpc_details,
    served,
    text_item,
    violated_fields,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

GOOD = image_pb(noise_image(7))
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def clip() -> Served:
    args = ["--max-images-per-request", "4", "--max-texts-per-request", "3", "--max-labels", "3"]
    async with served("builtin:clip", *args, "--max-text-chars", "50") as srv:
        yield srv


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dino() -> Served:
    async with served("builtin:dinov2") as srv:
        yield srv


async def fails(call, request) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request, timeout=30)
    return caught.value


async def still_serves(server: Served) -> None:
    reply = await server.stub.EmbedImages(vision_pb2.EmbedImagesRequest(images=[GOOD]), timeout=30)
    assert len(reply.embeddings) == 1


def truncated_png() -> bytes:
    data = png(noise_image(1))
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (media_pb2.Image(data=b"this is not an image"), "images[1].data"),
        (media_pb2.Image(data=truncated_png()), "images[1].data"),
        (media_pb2.Image(), "images[1]"),
        (media_pb2.Image(uri="file:///etc/passwd"), "images[1].uri"),
        (
            media_pb2.Image(data=png(noise_image(2)), format=media_pb2.IMAGE_FORMAT_JPEG),
            "images[1].data",
        ),
    ],
    ids=["garbage", "truncated", "no-source", "uri-not-allowed", "format-mismatch"],
)
async def test_bad_image_names_its_field(clip: Served, bad: media_pb2.Image, field: str) -> None:
    error = await fails(clip.stub.EmbedImages, vision_pb2.EmbedImagesRequest(images=[GOOD, bad]))
    assert error.code() == INVALID
    assert violated_fields(error) == [field]
    await still_serves(clip)


async def test_bad_image_in_a_large_split_request(clip: Served) -> None:
    # A later device-sized part failing cancels the parts already queued or running.
    async with served("builtin:clip", "--max-device-batch", "1") as small:
        images = [GOOD, GOOD, media_pb2.Image(data=b"garbage!")]
        error = await fails(small.stub.EmbedImages, vision_pb2.EmbedImagesRequest(images=images))
        assert violated_fields(error) == ["images[2].data"]
        await still_serves(small)


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("EmbedImages", vision_pb2.EmbedImagesRequest(), "images"),
        ("EmbedTexts", vision_pb2.EmbedTextsRequest(), "texts"),
        ("EmbedTexts", vision_pb2.EmbedTextsRequest(texts=["ok", " "]), "texts[1]"),
        ("EmbedTexts", vision_pb2.EmbedTextsRequest(texts=["x" * 51]), "texts[0]"),
        ("ComputeSimilarity", vision_pb2.ComputeSimilarityRequest(), "queries"),
        (
            "ComputeSimilarity",
            vision_pb2.ComputeSimilarityRequest(queries=[text_item("a")]),
            "candidates",
        ),
        (
            "ComputeSimilarity",
            vision_pb2.ComputeSimilarityRequest(
                queries=[text_item("a")], candidates=[vision_pb2.VisionInput()]
            ),
            "candidates[0]",
        ),
        ("Rank", vision_pb2.RankRequest(candidates=[text_item("a")]), "query"),
        ("Rank", vision_pb2.RankRequest(query=text_item("a")), "candidates"),
        ("ClassifyZeroShot", vision_pb2.ClassifyZeroShotRequest(labels=["cat"]), "images"),
        ("ClassifyZeroShot", vision_pb2.ClassifyZeroShotRequest(images=[GOOD]), "labels"),
        (
            "ClassifyZeroShot",
            vision_pb2.ClassifyZeroShotRequest(images=[GOOD], labels=["cat"], templates=["x"]),
            "templates[0]",
        ),
    ],
)
async def test_empty_or_malformed_fields(clip: Served, method: str, request_, field: str) -> None:
    error = await fails(getattr(clip.stub, method), request_)
    assert error.code() == INVALID
    assert violated_fields(error) == [field]
    await still_serves(clip)


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("EmbedImages", vision_pb2.EmbedImagesRequest(images=[GOOD] * 5), "images"),
        ("EmbedTexts", vision_pb2.EmbedTextsRequest(texts=["a"] * 4), "texts"),
        (
            "ClassifyZeroShot",
            vision_pb2.ClassifyZeroShotRequest(images=[GOOD], labels=["a", "b", "c", "d"]),
            "labels",
        ),
    ],
)
async def test_too_many_items(clip: Served, method: str, request_, field: str) -> None:
    error = await fails(getattr(clip.stub, method), request_)
    assert error.code() == INVALID
    assert violated_fields(error) == [field]
    assert "limit is" in error.details()
    await still_serves(clip)


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("EmbedTexts", vision_pb2.EmbedTextsRequest(texts=["a cat"])),
        (
            "ClassifyZeroShot",
            vision_pb2.ClassifyZeroShotRequest(images=[GOOD], labels=["cat"]),
        ),
        (
            "ComputeSimilarity",
            vision_pb2.ComputeSimilarityRequest(
                queries=[image_item(noise_image(3))], candidates=[text_item("a cat")]
            ),
        ),
        (
            "Rank",
            vision_pb2.RankRequest(
                query=image_item(noise_image(3)),
                candidates=[image_item(noise_image(4))],
                metric=vision_pb2.SIMILARITY_METRIC_MODEL_LOGITS,
            ),
        ),
    ],
)
async def test_text_to_an_image_only_model_is_failed_precondition(
    dino: Served, method: str, request_
) -> None:
    error = await fails(getattr(dino.stub, method), request_)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "image-only" in error.details()
    assert rpc_details(error)["ErrorInfo"].reason == "FailedPrecondition"
    await still_serves(dino)


async def test_dino_model_info_has_no_text(dino: Served) -> None:
    info = await dino.stub.GetModelInfo(vision_pb2.GetModelInfoRequest(), timeout=10)
    assert not info.supports_text
    assert info.limits.max_text_tokens == 0
    assert "embed_texts" not in info.model_info.capabilities
