"""EditImage / StreamEditImage and Qwen-Image inpainting with the tiny Qwen-Image pipeline: the
same images as diffusers' QwenImageEditPipeline and QwenImageInpaintPipeline in-process (from
the same folder, its processor/ read with the PIL image processor), streams, field checks.

An edit runs the pipeline's fixed one-megapixel conditioning image through the VAE, which is
slow on CPU even for the tiny model (tens of seconds on a loaded 2-core machine): few edits run.
"""

from __future__ import annotations

import io
import json
import shutil
from typing import Any

import grpc
import pytest
import pytest_asyncio
from diffusers import QwenImageEditPipeline, QwenImageInpaintPipeline, QwenImagePipeline
from PIL import Image
from transformers import Qwen2VLProcessor
from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

from mmserve.common.v1 import media_pb2
from mmserve.t2i.v1 import t2i_pb2
from services.runtime.images import encode_image
from tests.support.rpc import field_violations
from tests.t2i.helpers import (
    SMALL,
    generators,
    load_reference,
    params,
    png_bytes,
    served,
    solid_png,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

EDIT_WAIT = 600  # one tiny edit takes tens of seconds on a loaded 2-core machine
WAIT = 60
INSTRUCTION = "make the house blue"
SOURCE = solid_png((64, 64), (30, 160, 90))
# Qwen-Image's true CFG runs only with a negative prompt; the service sends " " for none.
CFG = {"true_cfg_scale": 4.0, "negative_prompt": " "}


class _NoVideoProcessor(Qwen2VLProcessor):
    """Qwen2VLProcessor without its video processor (that one needs torchvision)."""

    def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
        if argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def qwen(qwen_dir):
    async with served(["--model", str(qwen_dir), *SMALL]) as stub:
        yield stub


@pytest.fixture(scope="module")
def base(qwen_dir) -> Any:
    return load_reference(qwen_dir, QwenImagePipeline)


def _source() -> Image.Image:
    return Image.open(io.BytesIO(SOURCE)).convert("RGB")


def edit(image: bytes | None = SOURCE, **fields: Any) -> t2i_pb2.EditImageRequest:
    preview = fields.pop("preview", None)
    fields.setdefault("prompt", INSTRUCTION)
    fields.setdefault("num_inference_steps", 2)
    request = t2i_pb2.EditImageRequest(params=params(**fields), preview=preview)
    if image is not None:
        request.image.data = image
    return request


async def test_edit_equals_in_process_edit_pipeline_and_streams(qwen, qwen_dir, base) -> None:
    processor = _NoVideoProcessor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(str(qwen_dir / "processor")),
        tokenizer=base.tokenizer,
        video_processor=None,
    )
    pipe = QwenImageEditPipeline.from_pipe(base, processor=processor)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        image=_source(),
        prompt=INSTRUCTION,
        num_inference_steps=2,
        generator=generators(6, 1),
        height=64,
        width=64,
        **CFG,
    ).images
    reply = await qwen.EditImage(edit(seed=6), timeout=EDIT_WAIT)
    assert [image.data for image in reply.result.images] == png_bytes(expected)
    assert (reply.result.steps, reply.result.seed) == (2, 6)
    image = reply.result.images[0]
    assert (image.width, image.height, image.format) == (64, 64, media_pb2.IMAGE_FORMAT_PNG)

    request = edit(seed=6, preview=t2i_pb2.PreviewOptions(every_n_steps=1, max_side=16))
    events = [e async for e in qwen.StreamEditImage(request, timeout=EDIT_WAIT)]
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[0] == "accepted"
    assert kinds[-1] == "result"
    steps = [event.step for event in events if event.HasField("step")]
    assert [s.progress.step for s in steps] == [1, 2]  # previews are never dropped
    assert all(s.HasField("preview") for s in steps)
    assert events[-1].result.images[0].data == image.data


async def test_qwen_inpainting_equals_in_process_pipeline(qwen, base) -> None:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    pipe = QwenImageInpaintPipeline.from_pipe(base)
    pipe.set_progress_bar_config(disable=True)
    for strength in (1.0, 0.5):
        expected = pipe(
            prompt="a red cat",
            image=_source(),
            mask_image=mask,
            strength=strength,
            num_inference_steps=4,
            generator=generators(8, 1),
            height=64,
            width=64,
            **CFG,
        ).images
        reply = await qwen.InpaintImage(
            t2i_pb2.InpaintImageRequest(
                params=params(prompt="a red cat", seed=8, num_inference_steps=4),
                image=media_pb2.Image(data=SOURCE),
                mask=media_pb2.Image(data=encode_image(mask, "PNG")),
                strength=strength,
            ),
            timeout=WAIT,
        )
        assert [image.data for image in reply.result.images] == png_bytes(expected)
        assert reply.result.steps == int(4 * strength)


async def test_model_info_lists_inpainting_and_edits(qwen) -> None:
    reply = await qwen.GetModelInfo(t2i_pb2.GetModelInfoRequest(), timeout=WAIT)
    assert reply.limits.supports_inpainting
    assert reply.limits.supports_image_editing
    assert {"inpainting", "image_editing"} <= set(reply.model_info.capabilities)


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (edit(image=None), {"image"}),
        (edit(image=b"not an image"), {"image.data"}),
        (edit(image=b"not an image", output_quality=0), {"image.data", "params.output_quality"}),
        (edit(prompt=" ", width=100), {"params.prompt", "params.width"}),
        (edit(num_inference_steps=0), {"params.num_inference_steps"}),
    ],
    ids=["no image", "undecodable", "with params", "prompt and width", "zero steps"],
)
async def test_invalid_edit_names_the_fields(qwen, request_, fields: set[str]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await qwen.EditImage(request_, timeout=WAIT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == fields


async def test_a_qwen_image_edit_checkpoint_serves_generation_and_edits(
    qwen, qwen_dir, tmp_path
) -> None:
    # The layout of Qwen/Qwen-Image-Edit: Qwen-Image's components plus processor/, and
    # QwenImageEditPipeline in model_index.json. The tiny model's weights stand in for it.
    folder = tmp_path / "qwen-image-edit"
    shutil.copytree(qwen_dir, folder)
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    index["_class_name"] = "QwenImageEditPipeline"
    index["processor"] = ["transformers", "Qwen2VLProcessor"]
    (folder / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    request = t2i_pb2.TextToImageRequest(params=params(seed=3, num_inference_steps=2))
    async with served(["--model", str(folder), *SMALL]) as edit_model:
        info = await edit_model.GetModelInfo(t2i_pb2.GetModelInfoRequest(), timeout=WAIT)
        assert info.model_info.family == "qwen_image_edit"
        assert info.model_info.architecture == "QwenImagePipeline"
        limits = info.limits
        assert (limits.supports_image_editing, limits.supports_inpainting) == (True, True)
        assert limits.supports_image_to_image
        generated = await edit_model.TextToImage(request, timeout=WAIT)
    same_weights = await qwen.TextToImage(request, timeout=WAIT)
    assert generated.result.images[0].data == same_weights.result.images[0].data
