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
    from services.omni.bundled import smollm2_dir

    return smollm2_dir()
