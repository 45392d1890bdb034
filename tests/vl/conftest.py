"""Shared setup of the vl tests: few torch threads (CI has 2 cores), the tiny model folders,
and an in-process reference (plain transformers generate) to compare served answers with."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.vl.helpers import Reference

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def qwen25_dir() -> Path:
    from services.vl.builtin.qwen import tiny_model_dir

    return tiny_model_dir("qwen2_5_vl")


@pytest.fixture(scope="session")
def qwen2_dir() -> Path:
    from services.vl.builtin.qwen import tiny_model_dir

    return tiny_model_dir("qwen2_vl")


@pytest.fixture(scope="session")
def qwen25_reference(qwen25_dir: Path) -> Reference:
    return Reference.load(qwen25_dir, "qwen2_5_vl")
