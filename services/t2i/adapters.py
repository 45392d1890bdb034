"""LoRA adapters: loaded once at start from the operator's folder, activated per job.

Every `*.safetensors` file in `lora_dir` is loaded with the pipeline's own `load_lora_weights`
(so any format diffusers reads works: kohya, diffusers/peft, ...) under its file stem as the
adapter name. Loading injects LoRA layers into the shared components (denoiser, text
encoders), so the image-to-image pipeline sees them too. Before every job `activate` sets
exactly the adapters the job named, with their weights, or disables LoRA entirely when it named
none: nothing one job chose can leak into the next.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.runtime.errors import Violations

log = logging.getLogger("mmserve.t2i.adapters")

# peft keeps adapters in torch ModuleDicts keyed by name: no dots, nothing exotic.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
DEFAULT_WEIGHT = 1.0


@dataclass(frozen=True)
class AdapterChoice:
    """One adapter a request named, as sent: the weight None when unset."""

    name: str
    weight: float | None = None


def adapter_files(folder: str | Path) -> dict[str, Path]:
    """Adapter name -> file, for every safetensors file directly in `folder`."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ValueError(f"lora_dir {str(root)!r} is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(root.glob("*.safetensors")):
        name = path.name.removesuffix(".safetensors")
        if not _NAME.fullmatch(name):
            raise ValueError(
                f"LoRA file {path.name!r}: adapter names (file stems) must be 1-64 letters, "
                "digits, '_' or '-'"
            )
        found[name] = path
    return found


class Adapters:
    """The LoRA adapters of one loaded pipeline (device thread only, except `names`)."""

    def __init__(self, pipe: Any | None = None, names: Sequence[str] = ()) -> None:
        self._pipe = pipe
        self.names: tuple[str, ...] = tuple(sorted(names))
        self._active: tuple[tuple[str, float], ...] | None = None

    @classmethod
    def load(cls, pipe: Any, folder: str) -> Adapters:
        """Loads every adapter in `folder` into `pipe`; none when `folder` is empty."""
        if not folder:
            return cls()
        files = adapter_files(folder)
        if not files:
            log.warning("lora_dir %s holds no *.safetensors files", folder)
            return cls()
        if not hasattr(pipe, "load_lora_weights"):
            raise ValueError(f"{type(pipe).__name__} cannot load LoRA adapters (lora_dir is set)")
        for name, path in files.items():
            try:
                pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
            except Exception as exc:
                raise ValueError(
                    f"LoRA {path.name!r} does not load into this model: {exc}"
                ) from exc
            loaded = {n for names in pipe.get_list_adapters().values() for n in names}
            if name not in loaded:
                # diffusers only warns when no key matches (a LoRA made for another model).
                raise ValueError(
                    f"LoRA {path.name!r} does not load into this model: no layer matched"
                )
        log.info("loaded %d LoRA adapter(s): %s", len(files), ", ".join(files))
        adapters = cls(pipe, list(files))
        adapters.activate(())
        return adapters

    def activate(self, chosen: Sequence[tuple[str, float]]) -> None:
        """Exactly `chosen` (name, weight) active for the next run; LoRA off when empty."""
        if self._pipe is None:
            return
        wanted = tuple(chosen)
        if wanted == self._active:
            return
        self._active = None  # unknown if the calls below fail half-way
        if wanted:
            self._pipe.enable_lora()
            self._pipe.set_adapters([n for n, _ in wanted], [w for _, w in wanted])
        else:
            self._pipe.disable_lora()
        self._active = wanted


def check_adapters(
    chosen: Sequence[AdapterChoice],
    available: Sequence[str],
    max_weight: float,
    problems: Violations,
) -> tuple[tuple[str, float], ...]:
    """The (name, weight) pairs to activate; every unknown, repeated or out-of-range entry is
    added to `problems`, named by its index."""
    known = set(available)
    seen: set[str] = set()
    resolved = []
    for index, choice in enumerate(chosen):
        field = f"params.adapters[{index}]"
        if not choice.name:
            problems.add(f"{field}.name", "required")
        elif choice.name not in known:
            listed = ", ".join(available) if available else "none are configured"
            problems.add(f"{field}.name", f"unknown adapter {choice.name!r} (available: {listed})")
        elif choice.name in seen:
            problems.add(f"{field}.name", f"adapter {choice.name!r} is named twice")
        seen.add(choice.name)
        weight = DEFAULT_WEIGHT if choice.weight is None else choice.weight
        if not math.isfinite(weight) or abs(weight) > max_weight:
            problems.add(f"{field}.weight", f"{weight} is not in [-{max_weight}, {max_weight}]")
        resolved.append((choice.name, weight))
    return tuple(resolved)
