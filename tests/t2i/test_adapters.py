"""LoRA adapters per request, through a real server: each job's image equals the in-process
diffusers pipeline with the same adapters and weights, jobs back to back never see each other's
adapters, and bad adapter requests name the field."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from diffusers import AutoPipelineForImage2Image, QwenImagePipeline, StableDiffusionPipeline
from PIL import Image

from mmserve.common.v1 import media_pb2
from mmserve.t2i.v1 import t2i_pb2
from services.runtime.errors import Violations
from services.runtime.executor import JobContext
from services.t2i.adapters import AdapterChoice, adapter_files, check_adapters
from services.t2i.builtin.lora import ADAPTERS, qwen_lora_dir, sd_lora_dir
from services.t2i.config import T2ISettings
from services.t2i.engine import T2IEngine
from services.t2i.validation import GenerationRequest
from tests.support.rpc import field_violations
from tests.t2i.helpers import (
    PROMPT,
    generators,
    load_reference,
    params,
    png_bytes,
    served,
    solid_png,
)

ASYNC = pytest.mark.asyncio(loop_scope="module")

WAIT = 60


@pytest.fixture(scope="module")
def lora_dir() -> Path:
    return sd_lora_dir()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stub(sd_dir, lora_dir):
    async with served(["--model", str(sd_dir), "--lora-dir", str(lora_dir)]) as connected:
        yield connected


@pytest.fixture(scope="module")
def reference(sd_dir, lora_dir) -> Any:
    pipe = load_reference(sd_dir, StableDiffusionPipeline)
    for name in ADAPTERS:
        pipe.load_lora_weights(lora_dir, weight_name=f"{name}.safetensors", adapter_name=name)
    return pipe


def _expected(pipe: Any, adapters: list[tuple[str, float]], seed: int, **extra: Any) -> bytes:
    if adapters:
        pipe.enable_lora()
        pipe.set_adapters([n for n, _ in adapters], [w for _, w in adapters])
    else:
        pipe.disable_lora()
    images = pipe(
        PROMPT, num_inference_steps=3, generator=generators(seed, 1), guidance_scale=7.5, **extra
    ).images
    return png_bytes(images)[0]


def _request(adapters: list[tuple[str, float | None]], seed: int) -> t2i_pb2.TextToImageRequest:
    chosen = [t2i_pb2.AdapterWeight(name=n, weight=w) for n, w in adapters]
    return t2i_pb2.TextToImageRequest(
        params=params(seed=seed, num_inference_steps=3, adapters=chosen)
    )


@ASYNC
async def test_model_info_lists_the_adapters(stub) -> None:
    reply = await stub.GetModelInfo(t2i_pb2.GetModelInfoRequest(), timeout=WAIT)
    assert list(reply.adapters) == sorted(ADAPTERS)
    assert reply.max_adapter_weight == 10.0


@ASYNC
async def test_jobs_back_to_back_each_get_their_own_adapters(stub, reference) -> None:
    # Base, one adapter, two mixed, the other alone, base again: a leak of any earlier job's
    # adapters or weights into a later one changes its bytes.
    sequence: list[list[tuple[str, float]]] = [
        [],
        [("ink", 0.5)],
        [("ink", 1.0), ("paper", 0.75)],
        [("paper", 1.0)],
        [],
    ]
    served_images = []
    for adapters in sequence:
        reply = await stub.TextToImage(_request(list(adapters), seed=5), timeout=WAIT)
        served_images.append(reply.result.images[0].data)
    for adapters, data in zip(sequence, served_images, strict=True):
        assert data == _expected(reference, adapters, seed=5, height=64, width=64), adapters
    assert len(set(served_images[:4])) == 4  # every adapter choice changed the image
    assert served_images[0] == served_images[4]


@ASYNC
async def test_unset_weight_means_one(stub) -> None:
    unset = await stub.TextToImage(_request([("ink", None)], seed=2), timeout=WAIT)
    one = await stub.TextToImage(_request([("ink", 1.0)], seed=2), timeout=WAIT)
    assert unset.result.images[0].data == one.result.images[0].data


@ASYNC
async def test_image_to_image_with_an_adapter_equals_in_process(stub, reference) -> None:
    source = solid_png((64, 64), (30, 160, 90))
    reply = await stub.ImageToImage(
        t2i_pb2.ImageToImageRequest(
            params=params(
                seed=4, num_inference_steps=3, adapters=[t2i_pb2.AdapterWeight(name="paper")]
            ),
            image=media_pb2.Image(data=source),
            strength=1.0,
        ),
        timeout=WAIT,
    )
    image_pipe = AutoPipelineForImage2Image.from_pipe(reference)
    image_pipe.set_progress_bar_config(disable=True)
    picture = Image.open(io.BytesIO(source)).convert("RGB")
    expected = _expected(image_pipe, [("paper", 1.0)], seed=4, image=picture, strength=1.0)
    assert reply.result.images[0].data == expected


@ASYNC
@pytest.mark.parametrize(
    ("adapters", "fields", "mentions"),
    [
        ([("nope", 1.0)], ["params.adapters[0].name"], "'nope'"),
        ([("ink", 1.0), ("ink", 0.5)], ["params.adapters[1].name"], "twice"),
        ([("paper", float("nan"))], ["params.adapters[0].weight"], "nan"),
        ([("ink", 11.0), ("", 1.0)], ["params.adapters[0].weight", "params.adapters[1].name"], ""),
    ],
)
async def test_bad_adapters_are_invalid_argument_naming_the_field(
    stub, adapters: list[tuple[str, float]], fields: list[str], mentions: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.TextToImage(_request(list(adapters), seed=1), timeout=WAIT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == fields
    assert mentions in (caught.value.details() or "")
    # The service keeps serving.
    reply = await stub.TextToImage(_request([("ink", 0.25)], seed=1), timeout=WAIT)
    assert reply.result.images


def test_check_adapters_resolves_defaults_and_reports_every_problem() -> None:
    problems = Violations()
    chosen = (AdapterChoice("a"), AdapterChoice("b", -2.0), AdapterChoice("c", float("inf")))
    resolved = check_adapters(chosen, ["a", "b"], 4.0, problems)
    assert resolved == (("a", 1.0), ("b", -2.0), ("c", float("inf")))
    assert [v.field for v in problems.items] == [
        "params.adapters[2].name",
        "params.adapters[2].weight",
    ]


def test_adapter_folder_rules(tmp_path: Path) -> None:
    (tmp_path / "good-one_2.safetensors").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an adapter")
    assert list(adapter_files(tmp_path)) == ["good-one_2"]
    (tmp_path / "bad.name.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"bad\.name\.safetensors"):
        adapter_files(tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        adapter_files(tmp_path / "missing")


def test_qwen_image_adapter_equals_in_process(qwen_dir) -> None:
    # A second family (LoRA on an MMDiT, no text-encoder part), in-process through the engine.
    folder = qwen_lora_dir()
    engine = T2IEngine(
        T2ISettings(
            model=str(qwen_dir),
            lora_dir=str(folder),
            default_width=64,
            default_height=64,
            warmup_steps=0,
        )
    )
    engine.load()
    assert engine.adapter_names == ("glow",)
    reference = load_reference(qwen_dir, QwenImagePipeline)
    reference.load_lora_weights(folder, weight_name="glow.safetensors", adapter_name="glow")
    served_images = []
    for adapters in ([("glow", 0.8)], []):
        chosen = tuple(AdapterChoice(n, w) for n, w in adapters)
        plan = engine.plan(GenerationRequest(prompt=PROMPT, steps=2, seed=3, adapters=chosen))
        output = engine.generate(JobContext("job", "text_to_image"), plan)
        served_images.append(png_bytes(output.images)[0])
        if adapters:
            reference.enable_lora()
            reference.set_adapters(["glow"], [0.8])
        else:
            reference.disable_lora()
        expected = reference(
            PROMPT,
            negative_prompt=" ",
            true_cfg_scale=4.0,
            num_inference_steps=2,
            generator=generators(3, 1),
            height=64,
            width=64,
        ).images
        assert served_images[-1] == png_bytes(expected)[0], adapters
    assert served_images[0] != served_images[1]


def test_a_family_without_lora_support_fails_loading(hunyuan_dir, lora_dir) -> None:
    engine = T2IEngine(T2ISettings(model=str(hunyuan_dir), lora_dir=str(lora_dir)))
    with pytest.raises(ValueError, match="cannot load LoRA"):
        engine.load()


def test_an_adapter_for_another_model_fails_loading(qwen_dir, lora_dir) -> None:
    engine = T2IEngine(T2ISettings(model=str(qwen_dir), lora_dir=str(lora_dir)))
    with pytest.raises(ValueError, match="does not load"):
        engine.load()
