"""Legal but extreme sampling values stay numerically safe on every decoding path.

The contract takes any temperature in [0, 2] and any repetition penalty > 0, as float32. A
temperature of 1e-45 (a denormal) or a penalty of 1e-45 divides logits into infinities, so
the probabilities become NaN: transformers' sampler (generate(do_sample=True), which the omni
families use) then raises, which a server answers INTERNAL, and the runtime's own sampler picks
an arbitrary token. The plan (services/runtime/chat/sampling.py) makes such values safe once for
all paths; this checks both samplers on the plans it makes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from services.runtime.chat.rows import penalize, sample
from services.runtime.chat.sampling import (
    ModelDefaults,
    Sampling,
    SamplingPlan,
    ServiceDefaults,
    resolve_sampling,
)

# What a float32 field can carry that the contract allows.
TEMPERATURES = (1e-45, 1e-38, 1e-30, 1e-8, 1e-5, 0.7, 2.0)
PENALTIES = (1e-45, 1e-38, 1e-30, 1e-8, 1.0, 1e8, 1e30, 3.4028234e38)
TOP_P = (1e-45, 0.9, 1.0)


def _plan(temperature: float, penalty: float, top_p: float) -> SamplingPlan:
    as_sent = [float(np.float32(v)) for v in (temperature, penalty, top_p)]
    request = Sampling(temperature=as_sent[0], repetition_penalty=as_sent[1], top_p=as_sent[2])
    return resolve_sampling(request, ModelDefaults(), ServiceDefaults(4, 8))


def _logits(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 512, generator=generator) * 30.0


@pytest.mark.parametrize("top_p", TOP_P)
@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_transformers_sampler_gets_finite_probabilities(
    temperature: float, penalty: float, top_p: float
) -> None:
    plan = _plan(temperature, penalty, top_p)
    seen = torch.arange(0, 512, 3).unsqueeze(0)
    processors = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(plan.repetition_penalty)])
    if not plan.greedy:
        processors.append(TemperatureLogitsWarper(plan.temperature))
        processors.append(TopPLogitsWarper(plan.top_p))
    scores = processors(seen, _logits(1))
    probs = torch.softmax(scores, dim=-1)
    assert torch.isfinite(probs).all(), plan
    torch.multinomial(probs, 1)  # raises on inf or NaN


@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_runtime_sampler_draws_from_finite_probabilities(
    temperature: float, penalty: float
) -> None:
    plan = _plan(temperature, penalty, 0.9)
    logits = _logits(2)[0]
    scores = penalize(logits.clone(), torch.arange(0, 512, 3), plan.repetition_penalty)
    assert torch.isfinite(scores).all(), plan
    if plan.greedy:
        return
    assert torch.isfinite(torch.softmax(scores / plan.temperature, dim=-1)).all(), plan
    token = sample(scores, plan, torch.Generator().manual_seed(3))
    assert 0 <= token < logits.numel()


def test_a_temperature_too_small_to_sample_with_is_greedy() -> None:
    assert _plan(1e-30, 1.0, 1.0).greedy
    assert _plan(1e-45, 1.0, 1.0).greedy
    assert _plan(1e-30, 1.0, 1.0).temperature == 0.0
    assert _plan(0.01, 1.0, 1.0).temperature == pytest.approx(0.01)
