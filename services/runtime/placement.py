"""Models larger than one device: where each layer goes, decided by accelerate.

By default a service loads its model whole onto its one device (`device`). With `device_map`
set, transformers hands placement to accelerate: "auto"/"balanced" spread the layers evenly
over every visible GPU, "balanced_low_0" keeps GPU 0 lighter (it holds generation's buffers),
"sequential" fills GPU 0 first, then GPU 1, and so on; a JSON object maps module names to
devices by hand. `max_memory` caps what each device may hold ("0=30GiB,1=30GiB,cpu=64GiB"), and
layers that fit nowhere go to the CPU, then to disk under `offload_folder`. accelerate's hooks
move activations between devices during the forward pass, so the engines call the model as
usual; their inputs go to the first layer's device (`input_device`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)?\s*$", re.IGNORECASE)
_DEVICE_KEY = re.compile(r"^(\d+|cpu|disk|mps|cuda:\d+|xpu:\d+)$")


@dataclass(frozen=True)
class Placement:
    """The resolved placement settings; `enabled` is False for the one-device default."""

    device_map: str | dict[str, Any] | None = None
    max_memory: dict[int | str, str] = field(default_factory=dict)
    offload_folder: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.device_map is not None

    @classmethod
    def from_specs(
        cls, device_map: str = "", max_memory: str = "", offload_folder: str | Path | None = None
    ) -> Placement:
        """Parses the operator's settings once, at start-up; a bad one raises ValueError naming
        the setting."""
        parsed_map = parse_device_map(device_map)
        memory = parse_max_memory(max_memory)
        if memory and parsed_map is None:
            raise ValueError(
                "max_memory: only applies with device_map set (e.g. device_map 'auto'); "
                "a model on one device uses that device's memory as a whole"
            )
        folder = Path(offload_folder).expanduser() if offload_folder else None
        return cls(parsed_map, memory, folder)

    @classmethod
    def from_settings(cls, settings: Any) -> Placement:
        """From a service's settings (the device_map, max_memory and offload_folder fields;
        settings without them place the model on one device)."""
        return cls.from_specs(
            getattr(settings, "device_map", "") or "",
            getattr(settings, "max_memory", "") or "",
            getattr(settings, "offload_folder", None),
        )

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        """What `from_pretrained` needs to place the model (nothing for one device)."""
        if not self.enabled:
            return {}
        kwargs: dict[str, Any] = {"device_map": self.device_map}
        if self.max_memory:
            kwargs["max_memory"] = dict(self.max_memory)
        if self.offload_folder is not None:
            self.offload_folder.mkdir(parents=True, exist_ok=True)
            kwargs["offload_folder"] = str(self.offload_folder)
        return kwargs

    def check_compatible(self, compile_model: bool) -> None:
        if self.enabled and compile_model:
            raise ValueError(
                "compile: torch.compile does not trace accelerate's offload hooks; "
                "unset device_map or compile"
            )

    def describe(self) -> dict[str, str]:
        if not self.enabled:
            return {}
        found = {"device_map": json.dumps(self.device_map)}
        if self.max_memory:
            found["max_memory"] = ",".join(f"{k}={v}" for k, v in self.max_memory.items())
        return found


def parse_device_map(text: str) -> str | dict[str, Any] | None:
    """A strategy name, a JSON object of module name -> device, or None (one device) for
    an empty setting."""
    value = text.strip()
    if not value:
        return None
    if value in DEVICE_MAP_STRATEGIES:
        return value
    if value.startswith("{"):
        try:
            mapping = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"device_map: not valid JSON: {exc}") from exc
        if not isinstance(mapping, dict) or not mapping:
            raise ValueError("device_map: a JSON object of module name -> device is needed")
        for module, device in mapping.items():
            _check_device_key(str(device), f"device_map[{module!r}]")
        return mapping
    raise ValueError(
        f"device_map: {value!r} is not one of {', '.join(DEVICE_MAP_STRATEGIES)} "
        "nor a JSON object of module name -> device"
    )


def parse_max_memory(text: str) -> dict[int | str, str]:
    """Device=size pairs ("0=30GiB,1=30GiB,cpu=64GiB", or the same as a JSON object) in
    accelerate's form: GPU indexes as ints, "cpu"/"disk" as strings, sizes as given."""
    value = text.strip()
    if not value:
        return {}
    if value.startswith("{"):
        try:
            raw = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"max_memory: not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError("max_memory: a JSON object of device -> size is needed")
        pairs = [(str(k), str(v)) for k, v in raw.items()]
    else:
        pairs = []
        for part in value.split(","):
            key, sep, size = part.partition("=")
            if not sep:
                raise ValueError(f"max_memory: {part.strip()!r} is not device=size (e.g. 0=30GiB)")
            pairs.append((key.strip(), size.strip()))
    memory: dict[int | str, str] = {}
    for key, size in pairs:
        _check_device_key(key, "max_memory")
        if not _SIZE.match(size):
            raise ValueError(f"max_memory: {size!r} for {key!r} is not a size like 30GiB or 512MB")
        memory[int(key) if key.isdigit() else key] = size.replace(" ", "")
    return memory


def _check_device_key(key: str, where: str) -> None:
    if not _DEVICE_KEY.match(key.strip().lower()):
        raise ValueError(f"{where}: unknown device {key!r}: use a GPU index, cpu or disk")


def input_device(model: Any, fallback: torch.device) -> torch.device:
    """Where a placed model's inputs go: the device of its first placed layer (a layer on disk
    or the CPU is run on the CPU); `fallback` for a model on one device."""
    mapping = getattr(model, "hf_device_map", None)
    if not mapping:
        return fallback
    first = next(iter(mapping.values()))
    if isinstance(first, int):
        return torch.device("cuda", first)
    if first in ("disk", "cpu"):
        return torch.device("cpu")
    return torch.device(first)


def placed_devices(model: Any) -> list[str]:
    """The devices a placed model's layers are on, in order of first use (for logs and info)."""
    mapping = getattr(model, "hf_device_map", None) or {}
    seen: list[str] = []
    for device in mapping.values():
        name = f"cuda:{device}" if isinstance(device, int) else str(device)
        if name not in seen:
            seen.append(name)
    return seen
