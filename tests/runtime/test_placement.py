"""Models split across devices with accelerate (device_map, max_memory, offload_folder), tested
on CPU: a memory cap smaller than the model sends the layers that do not fit to disk, and the
split model answers exactly as the whole one does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from services.runtime.chat.messages import ImagePart, Message, Role, TextPart
from services.runtime.chat.sampling import Sampling
from services.runtime.config import ConfigError, load_settings
from services.runtime.executor import JobContext
from services.runtime.placement import (
    Placement,
    input_device,
    parse_device_map,
    parse_max_memory,
    placed_devices,
)
from services.vision.config import VisionSettings
from services.vision.engine import VisionEngine
from services.vision.inputs import ImageJob
from services.vl.chat import ChatInput
from services.vl.config import VLSettings
from services.vl.engine import CHAT_KIND, VLEngine

# --- parsing --------------------------------------------------------------------------------------


def test_max_memory_takes_pairs_or_json() -> None:
    assert parse_max_memory("0=30GiB, 1=30GiB,cpu=64GiB") == {
        0: "30GiB",
        1: "30GiB",
        "cpu": "64GiB",
    }
    assert parse_max_memory('{"0": "10GB", "disk": "1TB"}') == {0: "10GB", "disk": "1TB"}
    assert parse_max_memory("  ") == {}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0:30GiB", "is not device=size"),
        ("gpu0=30GiB", "unknown device 'gpu0'"),
        ("0=lots", "is not a size"),
        ("[1, 2]", "is not device=size"),
        ("{bad json", "not valid JSON"),
    ],
)
def test_bad_max_memory_names_the_setting(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="max_memory") as raised:
        parse_max_memory(text)
    assert fragment in str(raised.value)


def test_device_map_takes_strategies_or_a_module_map() -> None:
    assert parse_device_map("") is None
    assert parse_device_map("balanced_low_0") == "balanced_low_0"
    assert parse_device_map('{"model": 0, "lm_head": "cpu"}') == {"model": 0, "lm_head": "cpu"}
    with pytest.raises(ValueError, match="device_map: 'everywhere' is not one of"):
        parse_device_map("everywhere")
    with pytest.raises(ValueError, match=r"device_map\['lm_head'\]: unknown device 'gpu'"):
        parse_device_map('{"lm_head": "gpu"}')


def test_max_memory_without_a_device_map_is_refused() -> None:
    with pytest.raises(ValueError, match="max_memory: only applies with device_map"):
        Placement.from_specs("", "cpu=1GiB")
    assert not Placement.from_specs().enabled
    assert Placement.from_specs().from_pretrained_kwargs() == {}


def test_compile_and_a_split_model_do_not_mix() -> None:
    with pytest.raises(ValueError, match="compile"):
        Placement.from_specs("auto").check_compatible(compile_model=True)


def test_settings_carry_the_placement_flags(tmp_path: Path) -> None:
    settings = load_settings(
        VLSettings,
        ["--device-map", "sequential", "--max-memory", "0=20GiB,cpu=8GiB",
         "--offload-folder", str(tmp_path)],
    )  # fmt: skip
    placement = Placement.from_settings(settings)
    assert placement.from_pretrained_kwargs() == {
        "device_map": "sequential",
        "max_memory": {0: "20GiB", "cpu": "8GiB"},
        "offload_folder": str(tmp_path),
    }


def test_a_bad_placement_fails_the_engine_at_start() -> None:
    engine = VLEngine(VLSettings(device_map="everywhere"))
    with pytest.raises(ValueError, match="device_map"):
        engine.load()


def test_unknown_flag_values_are_config_errors() -> None:
    # The flags are plain strings: bad values fail at load with the setting named (above), a
    # missing value fails at parse.
    with pytest.raises((ConfigError, SystemExit)):
        load_settings(VLSettings, ["--device-map"])


# --- split models answer as whole ones ------------------------------------------------------------


def _chat(text: str, tokens: int) -> ChatInput:
    picture = Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 80, 3), np.uint8))
    parts = (ImagePart(picture), TextPart(text))
    return ChatInput((Message(Role.USER, parts),), Sampling(max_new_tokens=tokens))


def _answer(engine: VLEngine, text: str) -> tuple[str, int]:
    out = engine.generate(engine.prepare(_chat(text, 12)), JobContext("placement", CHAT_KIND))
    return out.text, out.output_tokens


@pytest.fixture(scope="module")
def whole_vl() -> VLEngine:
    engine = VLEngine(VLSettings())
    engine.load()
    return engine


def test_vl_split_between_memory_and_disk_answers_the_same(
    whole_vl: VLEngine, tmp_path: Path
) -> None:
    total = sum(p.numel() * p.element_size() for p in whole_vl.model.parameters())
    cap_kb = (total - 600_000) // 1000  # the model minus a few of its layers
    engine = VLEngine(
        VLSettings(device_map="sequential", max_memory=f"cpu={cap_kb}KB", offload_folder=tmp_path)
    )
    engine.load()
    devices = placed_devices(engine.model)
    # Layers on disk are read from the checkpoint's safetensors files when they are needed.
    assert "cpu" in devices, engine.model.hf_device_map
    assert "disk" in devices, engine.model.hf_device_map
    assert engine.options is not None
    assert engine.options.device == torch.device("cpu")
    for text in ("Describe the picture.", "What colour is it?"):
        assert _answer(engine, text) == _answer(whole_vl, text)


def test_vl_hand_written_device_map_answers_the_same(whole_vl: VLEngine, tmp_path: Path) -> None:
    names = [name for name, _ in whole_vl.model.model.language_model.layers.named_children()]
    mapping = {
        "model.visual": "cpu",
        "model.language_model.embed_tokens": "cpu",
        **{f"model.language_model.layers.{n}": "disk" if n == names[-1] else "cpu" for n in names},
        "model.language_model.norm": "cpu",
        "model.language_model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    engine = VLEngine(VLSettings(device_map=json.dumps(mapping), offload_folder=tmp_path))
    engine.load()
    assert engine.model.hf_device_map[f"model.language_model.layers.{names[-1]}"] == "disk"
    assert _answer(engine, "Describe the picture.") == _answer(whole_vl, "Describe the picture.")


def test_vision_towers_on_memory_and_disk_embed_the_same(tmp_path: Path) -> None:
    whole = VisionEngine(VisionSettings())
    whole.load()
    split = VisionEngine(
        VisionSettings(
            device_map='{"text_model": "cpu", "vision_model": "disk", "visual_projection": "cpu", '
            '"text_projection": "cpu", "logit_scale": "cpu"}',
            offload_folder=tmp_path,
        )
    )
    split.load()
    assert split.model.hf_device_map["vision_model"] == "disk"
    images = [Image.new("RGB", (40 + 8 * i, 30), (30 * i, 90, 200 - 20 * i)) for i in range(3)]
    [a] = whole.embed_images_batch([ImageJob(whole.prepare_images(images), "cls")])
    [b] = split.embed_images_batch([ImageJob(split.prepare_images(images), "cls")])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    texts = ["a red square", "a photo of a cat"]
    [ta] = whole.embed_texts_batch([whole.prepare_texts(texts)])
    [tb] = split.embed_texts_batch([split.prepare_texts(texts)])
    np.testing.assert_allclose(ta, tb, rtol=1e-5, atol=1e-6)


def test_input_device_of_a_model_on_one_device_is_the_fallback() -> None:
    assert input_device(torch.nn.Linear(2, 2), torch.device("cpu")) == torch.device("cpu")

    class Placed:
        def __init__(self) -> None:
            self.hf_device_map = {"a": 1, "b": "cpu"}

    assert input_device(Placed(), torch.device("cpu")) == torch.device("cuda", 1)
    assert placed_devices(Placed()) == ["cuda:1", "cpu"]


def test_t2i_refuses_a_device_map_instead_of_ignoring_it() -> None:
    from services.runtime.devices import TorchOptions
    from services.t2i.config import T2ISettings
    from services.t2i.loader import load_pipelines

    with pytest.raises(ValueError, match="device_map: not supported for diffusers pipelines"):
        load_pipelines(T2ISettings(device_map="auto"), TorchOptions.from_specs("cpu"))
