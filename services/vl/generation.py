"""One transformers `generate` call for one or more chat requests, with per-row streaming,
stop sequences, token limits and cancellation.

Everything per token happens in `RowWatcher`, a StoppingCriteria: generate calls it on the
device thread right after each new token, which is the moment to decode it, stream it
(ctx.emit), check the row's stop sequences and limit, and poll the row's cancel token, so a
cancelled request stops at its next token. Rows it reports done are padded by generate while
the rest of the batch goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessorList,
    PreTrainedModel,
    StoppingCriteria,
    StoppingCriteriaList,
)

from services.runtime.chat.decoding import Decoder, TextAssembler
from services.runtime.chat.messages import ChatOutput, FinishReason, TextDelta
from services.runtime.chat.sampling import SamplingPlan
from services.runtime.executor import JobContext
from services.vl.sampling import RowSampler


@dataclass
class Row:
    """One request's state during generation."""

    ctx: JobContext
    plan: SamplingPlan  # its max_new_tokens already fits the context
    input_tokens: int
    assembler: TextAssembler
    stream: bool
    output_tokens: int = 0
    finish: FinishReason | None = None

    def output(self) -> ChatOutput:
        return ChatOutput(
            text=self.assembler.text,
            finish_reason=self.finish or FinishReason.LENGTH,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            seed=self.plan.seed,
        )


@dataclass
class RowWatcher(StoppingCriteria):
    """Called by generate after every step with the sequences so far; returns which rows are
    done. Rows it has finished stay finished (generate appends pad tokens to them)."""

    rows: list[Row]
    eos_ids: frozenset[int]

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        last = input_ids[:, -1].tolist()
        done = [self._advance(row, token) for row, token in zip(self.rows, last, strict=True)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]

    def _advance(self, row: Row, token: int) -> bool:
        if row.finish is not None:
            return True
        if row.ctx.cancelled:
            row.finish = FinishReason.CANCELLED
            return True
        row.output_tokens += 1
        if token in self.eos_ids:
            row.finish = FinishReason.STOP
            released = row.assembler.finish()
        else:
            released = row.assembler.push(token)
            if row.assembler.stopped:
                row.finish = FinishReason.STOP
            elif row.output_tokens >= row.plan.max_new_tokens:
                row.finish = FinishReason.LENGTH
                released += row.assembler.finish()
        # Progress before the text: whoever sees a delta can rely on the job's step already
        # counting its token (both hop to the event loop in the order posted).
        row.ctx.progress(row.output_tokens, row.plan.max_new_tokens)
        if released and row.stream:
            row.ctx.emit(TextDelta(released, row.output_tokens))
        return row.finish is not None


def new_row(
    ctx: JobContext,
    plan: SamplingPlan,
    *,
    tokenizer: Decoder,
    input_tokens: int,
    stream: bool,
) -> Row:
    return Row(
        ctx=ctx,
        plan=plan,
        input_tokens=input_tokens,
        assembler=TextAssembler(tokenizer, plan.stop),
        stream=stream,
    )


def run_generate(
    model: PreTrainedModel,
    inputs: dict[str, torch.Tensor],
    rows: list[Row],
    *,
    eos_ids: frozenset[int],
    pad_token_id: int,
) -> list[ChatOutput]:
    """Runs generate for `rows` (one per batch row of `inputs`, already on the device) and
    returns their outputs; a row stopped by its cancel token finishes CANCELLED."""
    config = GenerationConfig(
        max_new_tokens=max(row.plan.max_new_tokens for row in rows),
        # Greedy at the generate level; RowSampler samples per row (see sampling.py). The
        # explicit values (transformers' own defaults, which it does not warn about) keep the
        # model's generation_config from adding warpers or a second repetition penalty.
        do_sample=False,
        num_beams=1,
        temperature=1.0,
        top_p=1.0,
        top_k=50,
        repetition_penalty=1.0,
        eos_token_id=sorted(eos_ids),
        pad_token_id=pad_token_id,
    )
    sampler = RowSampler([row.plan for row in rows], model.device)
    watcher = RowWatcher(rows, eos_ids)
    with torch.inference_mode():
        model.generate(
            **inputs,
            generation_config=config,
            logits_processor=LogitsProcessorList([sampler] if sampler.active else []),
            stopping_criteria=StoppingCriteriaList([watcher]),
        )
    return [row.output() for row in rows]
