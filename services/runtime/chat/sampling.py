"""Decoding parameters: what a request asks for, and the plan a generation runs with.

Each parameter is resolved in the same order everywhere: the request's value, else the model's
generation_config.json value, else the contract's default (max_new_tokens: the request's, else
the service's). A request that leaves the seed unset gets a random one, returned to the client
so the answer can be reproduced.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sampling:
    """Decoding parameters as the request gives them; None means "not given"."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class SamplingPlan:
    """Resolved decoding parameters of one generation; temperature 0 is greedy."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class ModelDefaults:
    """Decoding defaults from the model's generation_config.json; None where it sets none."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None

    @classmethod
    def from_generation_config(cls, config: Any) -> ModelDefaults:
        """From a transformers GenerationConfig (None: a model without one)."""
        if config is None:
            return cls()
        # Sampling parameters only count when the model samples by default; a greedy model's
        # leftover temperature must not turn its answers random.
        sampled = bool(getattr(config, "do_sample", False))
        top_k = getattr(config, "top_k", None)
        return cls(
            temperature=_float(config, "temperature") if sampled else None,
            top_p=_float(config, "top_p") if sampled else None,
            top_k=int(top_k) if sampled and top_k is not None else None,
            repetition_penalty=_float(config, "repetition_penalty"),
        )


def _float(config: Any, name: str) -> float | None:
    value = getattr(config, name, None)
    return None if value is None else float(value)


# The contract's defaults, for what neither the request nor the model sets.
DEFAULT_TEMPERATURE = 0.0
DEFAULT_TOP_P = 1.0
DEFAULT_TOP_K = 0
DEFAULT_REPETITION_PENALTY = 1.0

# Legal but extreme values, made numerically safe once here for every decoding path. Logits
# divided by a temperature below this overflow float32 (inf, then NaN probabilities: transformers'
# sampler raises, an argmax picks an arbitrary token); such a temperature is greedy in all but
# name, as vLLM treats it too. A repetition penalty past these bounds no longer changes which
# token wins, while scaling logits by it can overflow the same way.
MIN_SAMPLING_TEMPERATURE = 1e-5
MIN_REPETITION_PENALTY = 1e-4
MAX_REPETITION_PENALTY = 1e4


@dataclass(frozen=True)
class ServiceDefaults:
    """A service's token budget for requests that leave max_new_tokens unset, and its cap on
    max_new_tokens: larger requests are capped, not refused."""

    default_max_new_tokens: int
    max_new_tokens: int


def resolve_sampling(
    request: Sampling, model: ModelDefaults, service: ServiceDefaults
) -> SamplingPlan:
    """The plan: request value, else the model's, else the contract's default; a random seed if
    unset. max_new_tokens defaults to and is capped by the service's; the context's room is the
    engine's to apply."""
    wanted = request.max_new_tokens or service.default_max_new_tokens
    return SamplingPlan(
        max_new_tokens=min(wanted, service.max_new_tokens),
        temperature=_safe_temperature(
            _pick(request.temperature, model.temperature, DEFAULT_TEMPERATURE)
        ),
        top_p=float(_pick(request.top_p, model.top_p, DEFAULT_TOP_P)),
        top_k=int(_pick(request.top_k, model.top_k, DEFAULT_TOP_K)),
        repetition_penalty=_safe_penalty(
            _pick(request.repetition_penalty, model.repetition_penalty, DEFAULT_REPETITION_PENALTY)
        ),
        seed=request.seed if request.seed is not None else secrets.randbits(63),
        stop=request.stop,
    )


def _safe_temperature(value: float) -> float:
    return 0.0 if value < MIN_SAMPLING_TEMPERATURE else float(value)


def _safe_penalty(value: float) -> float:
    return min(max(float(value), MIN_REPETITION_PENALTY), MAX_REPETITION_PENALTY)


def _pick(given: float | None, from_model: float | None, fallback: float) -> float:
    if given is not None:
        return given
    return from_model if from_model is not None else fallback
