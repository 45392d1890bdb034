"""Per-request decoding parameters (services.runtime.chat.sampling resolves them), applied
per batch row by one LogitsProcessor.

Why not generate(do_sample=True): transformers samples with the process-wide RNG and one set of
parameters for the whole batch. Serving needs each request's own temperature, top-k, top-p,
repetition penalty and seed, also when requests share a batch, and a seed that gives the same
text whether or not the request was batched. So generate runs greedy, and this processor does
the per-row work: rows with temperature 0 keep their logits (plain greedy, identical to
generate(do_sample=False)); sampled rows draw a token with their own torch.Generator and
return a one-hot mask that greedy decoding then picks.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from services.runtime.chat.rows import penalize, sample
from services.runtime.chat.sampling import SamplingPlan


class RowSampler(LogitsProcessor):
    """Applies each row's repetition penalty, then samples the rows that are not greedy."""

    def __init__(self, plans: list[SamplingPlan], device: torch.device) -> None:
        self._plans = plans
        self._generators: list[torch.Generator | None] = []
        for plan in plans:
            if plan.greedy:
                self._generators.append(None)
            else:
                generator = torch.Generator(device=device)
                generator.manual_seed(plan.seed)
                self._generators.append(generator)
        self.active = any(not p.greedy or p.repetition_penalty != 1.0 for p in plans)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.active:
            return scores
        scores = scores.clone()
        for row, plan in enumerate(self._plans):
            if plan.repetition_penalty != 1.0:
                penalize(scores[row], input_ids[row], plan.repetition_penalty)
            generator = self._generators[row]
            if generator is not None:
                token = sample(scores[row], plan, generator)
                scores[row].fill_(float("-inf"))
                scores[row, token] = 0.0
        return scores  # type: ignore[return-value]
