"""Choosing the model: `builtin:<name>`, the default built-in, and the deprecated `tiny:<name>`
spelling, which still works and says what to write instead."""

from __future__ import annotations

import logging

import pytest

from services.runtime.config import load_settings
from services.vision.builtin import BUILTINS
from services.vision.config import VisionSettings
from services.vision.loading import resolve


def settings(model: str) -> VisionSettings:
    return load_settings(VisionSettings, ["--model", model])


def test_empty_model_is_the_default_tiny_clip() -> None:
    resolved = resolve(settings(""))
    assert BUILTINS.default == "clip"
    assert resolved.folder == BUILTINS.get("clip").build()
    assert resolved.model_id.startswith("builtin:clip")
    assert resolved.random_weights


@pytest.mark.parametrize("name", ["clip", "siglip", "siglip2", "dinov2", "dinov3"])
def test_builtin_names_resolve_to_their_folders(name: str) -> None:
    resolved = resolve(settings(f"builtin:{name}"))
    assert resolved.folder == BUILTINS.get(name).build()
    assert resolved.model_id.startswith(f"builtin:{name}")


def test_old_tiny_spelling_still_works_and_logs_a_deprecation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        resolved = resolve(settings("tiny:dinov2"))
    assert resolved.folder == BUILTINS.get("dinov2").build()
    assert "deprecated" in caplog.text
    assert "builtin:dinov2" in caplog.text


@pytest.mark.parametrize("model", ["builtin:nope", "tiny:nope"])
def test_unknown_builtin_lists_the_known_ones(model: str) -> None:
    with pytest.raises(ValueError, match="builtin:siglip2"):
        resolve(settings(model))
