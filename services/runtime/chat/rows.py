"""One request's state while it decodes among others: its token choice (greedy, or sampled
with its own generator and parameters), its text (whole characters, stop sequences cut), its
token limit, its cancel, and its streamed deltas.

Each row samples with a torch.Generator seeded from its own request, never the process-wide
RNG, so a seed gives the same text whatever rows it shares the device with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from services.runtime.chat.decoding import Decoder, TextAssembler
from services.runtime.chat.messages import ChatOutput, FinishReason, TextDelta
from services.runtime.chat.sampling import SamplingPlan
from services.runtime.job_context import JobContext


@dataclass(frozen=True)
class RowStart:
    """What the decode loop needs to know of a prepared request."""

    plan: SamplingPlan  # its max_new_tokens already fits the context
    input_tokens: int
    prompt_ids: tuple[int, ...]  # what a repetition penalty counts as seen
    stream: bool  # text deltas go out through ctx.emit as they complete


@dataclass
class DecodeRow:
    """A request in the decode batch; `job` is what the loop ends it with."""

    job: Any
    ctx: JobContext
    start: RowStart
    assembler: TextAssembler
    generator: torch.Generator | None = None
    output_tokens: int = 0
    finish: FinishReason | None = None
    largest_batch: int = 1
    generated: list[int] = field(default_factory=list)

    @classmethod
    def open(
        cls, job: Any, ctx: JobContext, start: RowStart, tokenizer: Decoder, device: torch.device
    ) -> DecodeRow:
        generator = None
        if not start.plan.greedy:
            generator = torch.Generator(device=device)
            generator.manual_seed(start.plan.seed)
        return cls(job, ctx, start, TextAssembler(tokenizer, start.plan.stop), generator)

    @property
    def plain_greedy(self) -> bool:
        """True when the batch's argmax is this row's choice (no sampling, no penalty)."""
        plan = self.start.plan
        return plan.greedy and plan.repetition_penalty == 1.0

    def choose(self, logits: torch.Tensor) -> int:
        """The next token from this row's logits (1-D), for rows that are not plain greedy."""
        plan = self.start.plan
        scores = logits.float()
        if plan.repetition_penalty != 1.0:
            seen = torch.tensor(
                [*self.start.prompt_ids, *self.generated], dtype=torch.long, device=logits.device
            )
            scores = penalize(scores.clone(), seen, plan.repetition_penalty)
        if self.generator is None:
            return int(torch.argmax(scores).item())
        return sample(scores, plan, self.generator)

    def advance(self, token: int, eos_ids: frozenset[int]) -> bool:
        """Takes the row's next token: decodes and streams it, applies the stop sequences and
        the token limit, and polls the cancel. True once the row is done."""
        if self.finish is not None:
            return True
        if self.ctx.cancelled:
            self.finish = FinishReason.CANCELLED
            return True
        self.output_tokens += 1
        self.generated.append(token)
        plan = self.start.plan
        if token in eos_ids:
            self.finish = FinishReason.STOP
            released = self.assembler.finish()
        else:
            released = self.assembler.push(token)
            if self.assembler.stopped:
                self.finish = FinishReason.STOP
            elif self.output_tokens >= plan.max_new_tokens:
                self.finish = FinishReason.LENGTH
                released += self.assembler.finish()
        # Progress before the text: whoever sees a delta can rely on the job's step already
        # counting its token (both hop to the event loop in the order posted).
        self.ctx.progress(self.output_tokens, plan.max_new_tokens)
        if released and self.start.stream:
            self.ctx.emit(TextDelta(released, self.output_tokens))
        return self.finish is not None

    def output(self) -> ChatOutput:
        return ChatOutput(
            text=self.assembler.text,
            finish_reason=self.finish or FinishReason.LENGTH,
            input_tokens=self.start.input_tokens,
            output_tokens=self.output_tokens,
            seed=self.start.plan.seed,
        )


def penalize(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """The CTRL-paper rule transformers uses: shrink positive logits, grow negative ones."""
    values = scores.gather(0, seen)
    values = torch.where(values < 0, values * penalty, values / penalty)
    return scores.scatter_(0, seen, values)


def sample(logits: torch.Tensor, plan: SamplingPlan, generator: torch.Generator) -> int:
    """One token drawn from `logits` (1-D) with the plan's temperature, top-k and top-p."""
    logits = logits.float() / plan.temperature
    if 0 < plan.top_k < logits.numel():
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
