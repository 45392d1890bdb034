"""Shared setup of the t2i tests: few torch threads (CI has 2 cores) and the tiny models,
built once per config and cached like any other model folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.t2i.builtin import tiny_model_dir

# One intra-op thread: the tiny models gain nothing from more, and the server's device thread
# and the test's reference pipeline then compute with the same reduction order.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sd_dir() -> Path:
    return tiny_model_dir("stable_diffusion")


@pytest.fixture(scope="session")
def hunyuan_dir() -> Path:
    return tiny_model_dir("hunyuan_dit")


@pytest.fixture(scope="session")
def qwen_dir() -> Path:
    return tiny_model_dir("qwen_image")
