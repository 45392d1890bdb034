"""The smaller pieces on their own: settings, per-row sampling, batch collation, the tiny
models' tokenizer, and the processor built without torchvision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from services.runtime.builtin import resolve_model
from services.runtime.chat.sampling import SamplingPlan
from services.runtime.config import ConfigError, load_settings
from services.vl.batching import collate
from services.vl.builtin import BUILTINS
from services.vl.builtin.qwen import IM_END_ID, IMAGE_PAD_ID, VISION_START_ID
from services.vl.config import VLSettings
from services.vl.sampling import RowSampler
from tests.vl.helpers import Reference


def test_settings_defaults_and_bounds() -> None:
    settings = load_settings(VLSettings, [])
    assert (settings.port, settings.metrics_port) == (50052, 9092)
    assert settings.default_max_new_tokens == 256
    assert settings.batching is True  # iteration-level batching, on by default
    assert settings.batch_max_size == 8
    with pytest.raises(ConfigError, match="default_max_new_tokens"):
        load_settings(VLSettings, ["--default-max-new-tokens", "9000", "--max-new-tokens", "10"])
    with pytest.raises(ConfigError, match="resolution_min_pixels"):
        load_settings(VLSettings, ["--default-min-pixels", "100"])


def test_row_sampler_is_greedy_per_row_and_repeatable() -> None:
    torch.manual_seed(0)
    scores = torch.randn(2, 1000)
    ids = torch.zeros(2, 3, dtype=torch.long)
    greedy = SamplingPlan(max_new_tokens=1, seed=1)
    sampled = SamplingPlan(max_new_tokens=1, temperature=1.0, top_p=0.9, top_k=50, seed=1)
    out = RowSampler([greedy, sampled], torch.device("cpu"))(ids, scores.clone())
    assert torch.equal(out[0], scores[0])  # greedy row untouched
    picked = int(out[1].argmax())
    assert out[1, picked] == 0
    assert torch.isinf(out[1]).sum() == 999
    assert picked in torch.topk(scores[1], 50).indices.tolist()
    again = RowSampler([sampled], torch.device("cpu"))(ids[1:], scores[1:].clone())
    assert int(again[0].argmax()) == picked


def test_collate_left_pads_tokens_and_concatenates_images() -> None:
    short = {
        "input_ids": torch.tensor([[5, 6]]),
        "attention_mask": torch.ones(1, 2, dtype=torch.long),
        "pixel_values": torch.ones(4, 3),
        "image_grid_thw": torch.tensor([[1, 2, 2]]),
    }
    long = {
        "input_ids": torch.tensor([[7, 8, 9]]),
        "attention_mask": torch.ones(1, 3, dtype=torch.long),
        "pixel_values": torch.zeros(8, 3),
        "image_grid_thw": torch.tensor([[1, 2, 4]]),
    }
    batch = collate([short, long], pad_token_id=0)
    assert batch is not None
    assert batch["input_ids"].tolist() == [[0, 5, 6], [7, 8, 9]]
    assert batch["attention_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]
    assert batch["pixel_values"].shape == (12, 3)
    assert batch["image_grid_thw"].tolist() == [[1, 2, 2], [1, 2, 4]]
    text_only = {"input_ids": torch.tensor([[1]]), "attention_mask": torch.ones(1, 1)}
    assert collate([short, text_only], pad_token_id=0) is None


def test_tiny_model_folder_is_a_real_checkpoint_layout(
    qwen25_dir: Path, qwen25_reference: Reference
) -> None:
    config = json.loads((qwen25_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    assert config["image_token_id"] == IMAGE_PAD_ID == 151655
    processor = qwen25_reference.processor  # services.vl.processor.load_processor's result
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    tokenizer = processor.tokenizer
    # The real Qwen2.5-VL ids.
    assert tokenizer("Hello")["input_ids"] == [9707]
    ids = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|vision_start|>", "<|image_pad|>"])
    assert ids == [IM_END_ID, VISION_START_ID, IMAGE_PAD_ID]
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_builtin_spellings_resolve_to_the_tiny_models(qwen25_dir: Path, qwen2_dir: Path) -> None:
    default = resolve_model(load_settings(VLSettings, []), BUILTINS)
    assert default.folder == qwen25_dir
    assert default.model_id.startswith("builtin:qwen2.5-vl")
    chosen = resolve_model(load_settings(VLSettings, ["--model", "builtin:qwen2-vl"]), BUILTINS)
    assert chosen.folder == qwen2_dir
    assert chosen.random_weights
    with pytest.raises(ValueError, match=r"builtin:qwen2\.5-vl"):
        resolve_model(load_settings(VLSettings, ["--model", "builtin:nope"]), BUILTINS)
