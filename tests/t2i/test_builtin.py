"""Built-in models: `--model builtin:<family>`, the default when `model` is empty, and the older
`tiny_model` setting, which still works and names its new spelling."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mmserve.t2i.v1 import t2i_pb2
from services.runtime.builtin import BUILTIN_PREFIX, ResolvedModel, resolve_model
from services.t2i.builtin import BUILTINS
from services.t2i.config import T2ISettings
from tests.t2i.helpers import params, served

WAIT = 60


def resolved_model(settings: T2ISettings) -> ResolvedModel:
    """The model the loader resolves for `settings`."""
    return resolve_model(settings, BUILTINS, legacy=("tiny_model", settings.tiny_model))


def test_every_tiny_family_is_a_builtin_and_stable_diffusion_is_the_default() -> None:
    assert BUILTINS.names() == (
        "stable_diffusion",
        "stable_diffusion_xl",
        "stable_diffusion_3",
        "flux",
        "hunyuan_dit",
        "qwen_image",
    )
    assert BUILTINS.default == "stable_diffusion"
    assert all(model.random_weights for model in BUILTINS.models)


def test_empty_model_is_the_default_builtin(sd_dir: Path) -> None:
    resolved = resolved_model(T2ISettings())
    assert resolved.folder == sd_dir
    assert resolved.model_id == "builtin:stable_diffusion (built-in, random weights)"
    assert resolved.random_weights


def test_builtin_spelling_picks_the_family(hunyuan_dir: Path) -> None:
    resolved = resolved_model(T2ISettings(model=BUILTIN_PREFIX + "hunyuan_dit"))
    assert resolved.folder == hunyuan_dir == BUILTINS.get("hunyuan_dit").build()
    assert resolved.model_id.startswith("builtin:hunyuan_dit")


def test_tiny_model_setting_still_works_and_logs_the_new_spelling(
    qwen_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        resolved = resolved_model(T2ISettings(tiny_model="qwen_image"))
    assert resolved.folder == qwen_dir
    assert "use --model builtin:qwen_image" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        resolved_model(T2ISettings(tiny_model="stable_diffusion"))  # the default: nothing to say
        # An explicit model wins over the older setting, silently.
        explicit = resolved_model(T2ISettings(model="builtin:hunyuan_dit", tiny_model="qwen_image"))
    assert "deprecated" not in caplog.text
    assert explicit.builtin is not None
    assert explicit.builtin.name == "hunyuan_dit"


def test_unknown_builtin_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="builtin:qwen_image"):
        resolved_model(T2ISettings(model="builtin:no_such_family"))


@pytest.mark.asyncio(loop_scope="function")
async def test_served_builtin_reports_its_name_and_generates(hunyuan_dir: Path) -> None:
    argv = ["--model", "builtin:hunyuan_dit", "--default-width", "64", "--default-height", "64"]
    async with served(argv) as stub:
        info = (await stub.GetModelInfo(t2i_pb2.GetModelInfoRequest(), timeout=WAIT)).model_info
        assert info.family == "hunyuan_dit"
        assert info.model_id == "builtin:hunyuan_dit (built-in, random weights)"
        reply = await stub.TextToImage(
            t2i_pb2.TextToImageRequest(params=params(seed=1, num_inference_steps=1)),
            timeout=WAIT,
        )
        assert reply.result.images[0].data.startswith(b"\x89PNG")
