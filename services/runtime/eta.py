"""Run-time estimates: what queue positions' ETAs and QueueFull's retry hints are made of.

Pure arithmetic over past run durations, touched only on the loop thread; kept apart from the
scheduler so the estimate can change (or be tested) without reading the executor.
"""

from __future__ import annotations


class RunTimeEstimator:
    """Per-kind exponential moving average of run durations.

    ETAs only need to be roughly right, and an EMA follows drift (warm caches, thermal limits)
    without keeping history. Until a kind has `min_samples` runs the base estimate is used, so
    one odd first run (compilation, cold cache) does not set every client's expectations.
    """

    def __init__(self, alpha: float, min_samples: int, base_seconds: float) -> None:
        self._alpha = alpha
        self._min_samples = min_samples
        self._base = base_seconds
        self._ema: dict[str, float] = {}
        self._samples: dict[str, int] = {}

    def observe(self, kind: str, seconds: float) -> None:
        seconds = max(0.0, seconds)
        previous = self._ema.get(kind)
        self._ema[kind] = (
            seconds if previous is None else self._alpha * seconds + (1 - self._alpha) * previous
        )
        self._samples[kind] = self._samples.get(kind, 0) + 1

    def estimate(self, kind: str) -> float:
        if self._samples.get(kind, 0) < self._min_samples:
            return self._base
        return self._ema[kind]

    def samples(self, kind: str) -> int:
        return self._samples.get(kind, 0)
