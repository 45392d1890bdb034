"""Shared fixtures of the omni tests. Model files come from PyPI packages (SmolLM2, Whisper
tiny.en, the Piper voice, Silero VAD) and the model cache; nothing is downloaded."""

from __future__ import annotations

import os

# Two cores are shared by the test process and the servers it starts.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture(scope="session")
def smollm2_folder():
    """SmolLM2 converted from its GGUF once (the servers find the same cached folder)."""
    from services.omni.builtin.bundled import smollm2_dir

    return smollm2_dir()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny Qwen-Omni models in-process: one thread is as fast, and two spin against each other
    on loaded cores (token2wav took 12 s with two threads instead of 0.5 s with one)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
