"""Opt-in step caching through diffusers' own cache hooks (`CacheMixin.enable_cache`).

First Block Cache runs the denoiser's first transformer block every step and skips the rest
while that block's output residual changes by less than `step_cache_threshold` (relative
absmean) since the last full step, reusing the cached residual of the other blocks. Only
denoisers that mix in diffusers' `CacheMixin` have the hooks (FLUX, Qwen-Image, ...); UNets
and HunyuanDiT do not, and asking for a cache with them fails loading rather than silently
serving uncached.

The hooks keep per-run state. Pipelines reset it at the end of a call, but a job cancelled
mid-loop never gets there, so every job resets it before it starts.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("mmserve.t2i.caching")


class StepCache:
    """The cache applied to one pipeline's denoiser, or none."""

    def __init__(self, denoiser: Any | None = None, kind: str = "none") -> None:
        self._denoiser = denoiser
        self.kind = kind if denoiser is not None else "none"

    @classmethod
    def apply(cls, pipe: Any, kind: str, threshold: float) -> StepCache:
        if kind == "none":
            return cls()
        denoiser = getattr(pipe, "transformer", None)
        if denoiser is None or not hasattr(denoiser, "enable_cache"):
            name = type(denoiser if denoiser is not None else pipe).__name__
            raise ValueError(
                f"step_cache {kind!r}: {name} has no diffusers cache hooks; use step_cache none"
            )
        from diffusers.hooks import FirstBlockCacheConfig

        denoiser.enable_cache(FirstBlockCacheConfig(threshold=threshold))
        log.info("step cache %s on %s (threshold %g)", kind, type(denoiser).__name__, threshold)
        return cls(denoiser, kind)

    def reset(self) -> None:
        """Forget the previous run's cached residuals (device thread, before a run)."""
        if self._denoiser is not None:
            self._denoiser._reset_stateful_cache()
