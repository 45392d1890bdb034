"""Shared setup of the t2i tests: few torch threads (CI has 2 cores) and the tiny models,
built once per config and cached like any other model folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.t2i.builtin import BUILTINS

# One intra-op thread: the tiny models gain nothing from more, and the server's device thread
# and the test's reference pipeline then compute with the same reduction order.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sd_dir() -> Path:
    return BUILTINS.get("stable_diffusion").build()


@pytest.fixture(scope="session")
def hunyuan_dir() -> Path:
    return BUILTINS.get("hunyuan_dit").build()


@pytest.fixture(scope="session")
def qwen_dir() -> Path:
    return BUILTINS.get("qwen_image").build()


@pytest.fixture(scope="session")
def sdxl_dir() -> Path:
    return BUILTINS.get("stable_diffusion_xl").build()


@pytest.fixture(scope="session")
def sd3_dir() -> Path:
    return BUILTINS.get("stable_diffusion_3").build()


@pytest.fixture(scope="session")
def flux_dir() -> Path:
    return BUILTINS.get("flux").build()
