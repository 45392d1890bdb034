"""Device, dtype and attention choice, shared by every engine.

Each service runs one process per accelerator: the operator picks the GPU with
`CUDA_VISIBLE_DEVICES`, so inside the process the chosen GPU is always `cuda:0`. The "auto"
choices here encode the defaults users expect (bf16 where the GPU supports it, fp16 on other
accelerators; on CPU a bf16 checkpoint's own precision where the CPU computes in bf16 natively,
else fp32; flash-attn when installed, else PyTorch SDPA). Bad specs raise
ValueError at start-up, long before a request arrives, with a message that says what to change.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")

ATTENTION_CHOICES = ("auto", "sdpa", "eager", "flash_attention_2")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

_DTYPE_ALIASES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}

_DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """Turn "auto", "cpu", "cuda", "cuda:N" or "mps" into a device that exists here."""
    text = str(spec).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            # CUDA_VISIBLE_DEVICES already narrowed the process to its GPU; it is index 0.
            return torch.device("cuda", 0)
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise ValueError("device 'mps' was asked for but Apple MPS is not available here")
        return torch.device("mps")
    if text == "cuda" or text.startswith("cuda:"):
        return _resolve_cuda(text)
    raise ValueError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps")


def _resolve_cuda(text: str) -> torch.device:
    index_text = text.partition(":")[2] or "0"
    if not index_text.isdigit():
        raise ValueError(f"bad CUDA device {text!r}: the index must be a number, e.g. cuda:0")
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        raise ValueError(
            f"device {text!r} was asked for but CUDA is not available{hint}: "
            "this torch build has no CUDA or no GPU is visible"
        )
    index = int(index_text)
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(
            f"device {text!r} was asked for but only {count} CUDA device(s) are visible; "
            "with CUDA_VISIBLE_DEVICES picking one GPU, use cuda:0"
        )
    return torch.device("cuda", index)


def resolve_dtype(
    spec: str | torch.dtype, device: torch.device, checkpoint: torch.dtype | None = None
) -> torch.dtype:
    """Turn "auto" or a dtype name into a torch dtype suited to `device` (and, for auto on CPU,
    to the dtype the checkpoint was saved in, when known)."""
    if isinstance(spec, torch.dtype):
        return spec
    text = spec.strip().lower()
    if text == "auto":
        return _auto_dtype(device, checkpoint)
    try:
        return _DTYPE_ALIASES[text]
    except KeyError:
        raise ValueError(
            f"unknown dtype {spec!r}: use auto, bf16/bfloat16, fp16/float16 or fp32/float32"
        ) from None


def cpu_computes_bf16() -> bool:
    """True when this CPU has bf16 instructions (AVX512-BF16 or AMX), so bf16 kernels run
    natively instead of being emulated through fp32 at a loss."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def checkpoint_dtype(folder: Path) -> torch.dtype | None:
    """The dtype a transformers checkpoint was saved in (config.json's `dtype`, formerly
    `torch_dtype`, or its text model's), or None when the folder does not say."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    candidates = [config, config.get("text_config") or {}, config.get("thinker_config") or {}]
    for entry in candidates:
        if not isinstance(entry, dict):
            continue
        name = entry.get("dtype") or entry.get("torch_dtype")
        if isinstance(name, str) and name.lower() in _DTYPE_ALIASES:
            return _DTYPE_ALIASES[name.lower()]
    return None


def _auto_dtype(device: torch.device, checkpoint: torch.dtype | None = None) -> torch.dtype:
    if device.type == "cuda":
        # Ampere and newer run bf16 natively, and it has fp32's range (fewer overflow NaNs).
        # Older GPUs only emulate it, slowly, so they get fp16.
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else torch.float16
    if device.type == "mps":
        return torch.float16
    if checkpoint is torch.bfloat16 and cpu_computes_bf16():
        # What transformers' own dtype="auto" (the model card's recipe) and vLLM's CPU backend
        # load: the checkpoint's bf16. With bf16 instructions a decode step of SmolLM2-135M
        # takes 40 ms against 59 ms in fp32 on this project's 2-core machine.
        return torch.bfloat16
    # CPU fp16 kernels are slow or missing for many ops, and bf16 without bf16 instructions is
    # emulated: fp32 is the safe default.
    return torch.float32


@functools.cache
def _flash_attn_available() -> bool:
    # Importing (not just finding) the package: a flash_attn wheel built against another torch
    # is found but fails to import, and auto must then fall back to sdpa instead of crashing.
    try:
        importlib.import_module("flash_attn")
    except Exception as exc:  # ImportError, OSError for a bad .so, RuntimeError from CUDA init
        logger.debug("flash_attn is not usable: %s", exc)
        return False
    return True


def resolve_attention(spec: str, device: torch.device) -> str:
    """Pick the transformers `attn_implementation` name for `spec` on `device`."""
    text = spec.strip().lower()
    if text not in ATTENTION_CHOICES:
        raise ValueError(f"unknown attention {spec!r}: use one of {', '.join(ATTENTION_CHOICES)}")
    if text == "auto":
        if device.type == "cuda" and _flash_attn_available():
            return "flash_attention_2"
        return "sdpa"
    if text == "flash_attention_2":
        if not _flash_attn_available():
            raise ValueError(
                "attention 'flash_attention_2' was asked for but the flash_attn package is not "
                "installed (or does not import); install flash-attn or use attention 'sdpa'"
            )
        if device.type != "cuda":
            raise ValueError(
                f"attention 'flash_attention_2' needs a CUDA device, not {device.type!r}; "
                "use attention 'sdpa'"
            )
    return text


def maybe_compile(
    module: T, enabled: bool, mode: str | None = None, *, backend: str = "inductor"
) -> T:
    """Return `module` compiled with torch.compile when `enabled`, else unchanged.

    An nn.Module is compiled in place (`Module.compile`) rather than wrapped: the object keeps
    its class, attributes and state_dict keys, which pipelines and `generate()` rely on.
    Compilation itself is lazy; the caller's warm-up run pays for it before serving.
    """
    if not enabled:
        return module
    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}: use one of {', '.join(COMPILE_MODES)}")
    if isinstance(module, torch.nn.Module):
        module.compile(mode=mode, backend=backend)
        return module
    if callable(module):
        compiled: Callable[..., Any] = torch.compile(module, mode=mode, backend=backend)
        return compiled  # type: ignore[return-value]
    raise TypeError(f"cannot compile {type(module).__name__}: not a module or a callable")


def device_memory_bytes(device: torch.device) -> int | None:
    """Memory this process holds on `device`: allocated tensors on GPUs, resident set on CPU."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.memory_allocated(device))
        if device.type == "mps":
            return int(torch.mps.current_allocated_memory())
    except (RuntimeError, AssertionError, AttributeError) as exc:
        logger.debug("no memory figure for %s: %s", device, exc)
        return None
    if device.type == "cpu":
        return _process_rss_bytes()
    return None


def _process_rss_bytes() -> int | None:
    # /proc gives the current resident set; getrusage only the peak, so it is the fallback.
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            resident_pages = int(statm.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if peak <= 0:
        return None
    # Linux reports kilobytes, macOS bytes.
    return peak if sys.platform == "darwin" else peak * 1024


def dtype_name(dtype: torch.dtype) -> str:
    """The plain name ("float32", "float16", "bfloat16") for logs, metrics and info RPCs."""
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


@dataclass(frozen=True)
class TorchOptions:
    """The resolved torch settings one engine loads and runs its model with."""

    device: torch.device
    dtype: torch.dtype
    attention: str
    compile: bool = False
    compile_mode: str | None = None

    @classmethod
    def from_specs(
        cls,
        device: str = "auto",
        dtype: str = "auto",
        attention: str = "auto",
        compile: bool = False,
        compile_mode: str | None = None,
        checkpoint: torch.dtype | None = None,
    ) -> TorchOptions:
        """Resolve the operator's specs once, at start-up, so bad ones fail fast. `checkpoint`
        is the dtype the model was saved in, which auto follows on CPU (see `_auto_dtype`)."""
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"unknown compile mode {compile_mode!r}: use one of {', '.join(COMPILE_MODES)}"
            )
        resolved = resolve_device(device)
        return cls(
            device=resolved,
            dtype=resolve_dtype(dtype, resolved, checkpoint),
            attention=resolve_attention(attention, resolved),
            compile=compile,
            compile_mode=compile_mode,
        )

    @classmethod
    def from_settings(cls, settings: Any, folder: Path | None = None) -> TorchOptions:
        """`from_specs` with a service's settings (device, dtype, attention, compile and, where
        it has one, compile_mode); `folder` is the model's, whose saved dtype auto follows."""
        return cls.from_specs(
            settings.device,
            settings.dtype,
            settings.attention,
            settings.compile,
            getattr(settings, "compile_mode", None),
            checkpoint=checkpoint_dtype(folder) if folder is not None else None,
        )

    def describe(self) -> dict[str, str]:
        """Plain strings for logs and info endpoints."""
        return {
            "device": str(self.device),
            "dtype": dtype_name(self.dtype),
            "attention": self.attention,
            "compile": (self.compile_mode or "default") if self.compile else "off",
        }
