"""Random-weight models at GPU sizes, built in seconds: the module is made on the meta device
(accelerate's `init_empty_weights`, no memory and no initialiser runs), then each parameter is
allocated once, in the dtype it is saved in, and filled by one cheap deterministic pass.

The usual path (`Model(config)`) runs every layer's own initialiser in float32 when the layer is
made, then transformers' `_init_weights` a second time, and saves float32: for a 3.7 B model
that is two passes over 15 GB and a 15 GB write. Here it is one pass and a 7.4 GB bf16 write,
on the GPU when there is one (filling is then nearly free and saving dominates).

The values are what a freshly initialised model holds in spirit (norm scales 1, biases 0,
everything else normal with a small std), so activations stay finite through deep stacks in
bf16; they serve throughput benchmarks, not quality. On a GPU each weight is drawn afresh; on
a CPU, where drawing normals runs at about 100 M values/s on 2 cores, weights are windows at
varying offsets into one pool of a million seeded normals (a prime length, so rows of
power-of-two widths never line up), which costs a memory copy. The folders load through the
services' normal `from_pretrained` path, like any checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)

DEFAULT_STD = 0.02
# The CPU fill's pool of normals: a prime length, about 4 MB in float32.
POOL_SIZE = 1_048_573
# CLIP-style temperature parameters start at log(1/0.07), as the papers' recipes do.
_LOGIT_SCALE = math.log(1 / 0.07)


def fill_device() -> torch.device:
    """Where values are generated: the GPU when there is one (orders of magnitude faster)."""
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def empty(factory: Callable[[], M]) -> M:
    """`factory()` with every parameter on the meta device; buffers (position ids, rotary
    frequencies) stay real, since nothing below recomputes them."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return factory()


def materialise(
    module: M,
    dtype: torch.dtype,
    *,
    std: float = DEFAULT_STD,
    seed: int = 0,
    device: torch.device | None = None,
) -> M:
    """Gives every meta parameter of `module` real storage on the CPU in `dtype`, filled in
    parameter order from one seeded generator (the same model every time on one kind of
    device). Tied parameters stay tied (transformers' tie_weights, after the fill). Floating
    buffers are cast to `dtype` too, as `from_pretrained(dtype=...)` would."""
    device = device or fill_device()
    draw = _Drawer(device, dtype, std, seed)
    made: dict[int, nn.Parameter] = {}
    for owner in module.modules():
        norm = _is_norm(owner)
        for name, param in list(owner._parameters.items()):
            if param is None or not param.is_meta:
                continue
            new = made.get(id(param))
            if new is None:
                values = _values(name, param, norm, draw)
                new = nn.Parameter(values.to("cpu", dtype), requires_grad=False)
                made[id(param)] = new
            owner._parameters[name] = new
    for owner in module.modules():
        for name, buffer in list(owner._buffers.items()):
            if buffer is not None and buffer.is_floating_point() and buffer.dtype != dtype:
                owner._buffers[name] = buffer.to(dtype)
    # init_empty_weights gives each registration its own meta tensor, which unties shared
    # weights (an output head tied to the embedding); transformers models tie them again.
    tie = getattr(module, "tie_weights", None)
    if callable(tie):
        tie()
    return module


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm | nn.GroupNorm) or "Norm" in type(module).__name__


class _Drawer:
    """Normal(0, std) tensors in `dtype`: drawn on a GPU, windows into a seeded pool on a CPU."""

    def __init__(self, device: torch.device, dtype: torch.dtype, std: float, seed: int) -> None:
        self.device, self.dtype, self.std = device, dtype, std
        self.generator = torch.Generator(device).manual_seed(seed)
        self.pool: torch.Tensor | None = None
        self.offset = 0
        if device.type == "cpu":
            pool = torch.empty(POOL_SIZE).normal_(0.0, std, generator=self.generator)
            self.pool = pool.to(dtype)

    def normal(self, shape: torch.Size) -> torch.Tensor:
        if self.pool is None:
            out = torch.empty(shape, device=self.device).normal_(
                0.0, self.std, generator=self.generator
            )
            return out.to(self.dtype)
        total = math.prod(shape)
        flat = torch.empty(total, dtype=self.dtype)
        start, done = self.offset, 0
        while done < total:
            take = min(POOL_SIZE - start, total - done)
            flat[done : done + take] = self.pool[start : start + take]
            done += take
            start = 0
        # The next tensor starts elsewhere in the pool: no two weights are the same window.
        self.offset = (self.offset + 7919 * (1 + total % 65521)) % POOL_SIZE
        return flat.view(shape)

    def full(self, shape: torch.Size, value: float) -> torch.Tensor:
        return torch.full(shape, value, dtype=self.dtype, device=self.device)


def _values(name: str, param: nn.Parameter, norm: bool, draw: _Drawer) -> torch.Tensor:
    shape = param.shape
    if name == "logit_scale":
        return draw.full(shape, _LOGIT_SCALE)
    if name == "logit_bias" or name.endswith("bias"):
        return draw.full(shape, 0.0)
    if norm and param.dim() <= 1:
        return draw.full(shape, 1.0)
    return draw.normal(shape)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe_build(module: nn.Module, dtype: torch.dtype) -> dict[str, Any]:
    """What was built, for logs: parameters (millions) and dtype."""
    return {"parameters_m": round(parameter_count(module) / 1e6, 1), "dtype": str(dtype)}
