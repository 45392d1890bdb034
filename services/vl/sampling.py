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
                _penalize(scores[row], input_ids[row], plan.repetition_penalty)
            generator = self._generators[row]
            if generator is not None:
                token = _sample(scores[row], plan, generator)
                scores[row].fill_(float("-inf"))
                scores[row, token] = 0.0
        return scores  # type: ignore[return-value]


def _penalize(row: torch.Tensor, seen: torch.Tensor, penalty: float) -> None:
    # The CTRL-paper rule transformers uses: shrink positive logits, grow negative ones.
    values = row.gather(0, seen)
    values = torch.where(values < 0, values * penalty, values / penalty)
    row.scatter_(0, seen, values)


def _sample(row: torch.Tensor, plan: SamplingPlan, generator: torch.Generator) -> int:
    logits = row.float() / plan.temperature
    if plan.top_k > 0 and plan.top_k < logits.numel():
        kth = torch.topk(logits, plan.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if plan.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        # Drop a token once the mass before it already reaches top_p; the best always stays.
        drop = (torch.cumsum(probs, dim=-1) - probs) >= plan.top_p
        logits = logits.index_fill(0, order[drop], float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    # argmax(p / E) with E ~ Exp(1) draws from p exactly (the exponential race); it is much
    # cheaper than torch.multinomial over a 150k-token vocabulary on CPU.
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return int(torch.argmax(probs / race).item())
