"""Iteration-level (continuous) batching of chat decoding: one device run that requests join
at token boundaries and leave when done.

Each step the loop (1) drops rows whose caller cancelled, (2) prefills the newcomers that
arrived since the last step, in one call when their inputs stack, so a newcomer holds the
running rows back by one prefill at most, and gives each its first token, then (3) runs one
decode step for every row, each row choosing its own token (greedy, or sampled with its own
seed, penalty and limits) and streaming its own text. A row that stops (end of turn, stop
sequence, token limit, cancel) leaves the batch and its job ends at once.

Capability-agnostic: a capability supplies a `DecodeModel` (how its prepared inputs become
rows and a prefill, and the model a step runs); the executor supplies the JoinSession
(services.runtime.batching) that hands over newcomers. Greedy answers match generating each
request alone: padding is masked out and each row keeps its own positions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable
from typing import Any

import torch

from services.runtime.batching import JoinSession
from services.runtime.chat.decoding import Decoder
from services.runtime.chat.kv_batch import KvBatch, Prefill
from services.runtime.chat.messages import ChatOutput, FinishReason
from services.runtime.chat.projection import speed_up_output_projection
from services.runtime.chat.rows import DecodeRow, RowStart
from services.runtime.errors import JobCancelled
from services.runtime.job_context import JobContext
from services.runtime.mailbox import held_reports


class DecodeModel(ABC):
    """What a capability gives the decode loop. Everything runs on the device thread."""

    model: Any  # the causal LM a decode step calls (input_ids, mask, position_ids, cache)
    tokenizer: Decoder
    eos_ids: frozenset[int]

    @abstractmethod
    def row_start(self, prepared: Any) -> RowStart: ...

    def prefill_group(self, prepared: Any) -> Hashable:
        """Newcomers with equal groups prefill in one call."""
        return None

    @abstractmethod
    def prefill(self, prepared: list[Any]) -> Prefill:
        """Runs the prompts of `prepared` (one group) in one forward."""

    def result(self, prepared: Any, output: ChatOutput) -> Any:
        """What the job returns for a finished row (a capability's own output type)."""
        return output

    @property
    def device(self) -> torch.device:
        return self.model.device


def _prompt_length(model: DecodeModel, prepared: Any) -> int:
    try:
        return len(model.row_start(prepared).prompt_ids)
    except Exception:  # the prefill reports it; for the budget it costs nothing
        return 0


def _cancel_error(row: DecodeRow) -> Exception:
    return row.ctx.cancel.error or JobCancelled("cancelled")


class DecodeLoop:
    """One joined run: call `run(session)` on the device thread (the operation's run_joined)."""

    def __init__(self, model: DecodeModel, prefill_tokens: int = 0) -> None:
        """`prefill_tokens`: the most tokens one prefill computes (rows x the longest prompt,
        as left padding does; 0: no limit). Newcomers past it prefill at the next step, so
        the running rows wait for a bounded prefill and the first newcomers start sooner."""
        self._model = model
        self._prefill_tokens = prefill_tokens
        speed_up_output_projection(model.model)
        self._rows: list[DecodeRow] = []
        self._batch: KvBatch | None = None
        self._waiting: list[Any] = []  # taken jobs not yet prefilled (another group's turn)

    def run(self, session: JoinSession) -> None:
        while True:
            taken = session.take()
            if taken is None:
                return
            self._waiting += taken
            self._drop_cancelled(session)
            if self._waiting:
                self._admit(session)
            if self._rows:
                self._step(session)

    # --- rows leaving ------------------------------------------------------------------------

    def _end(self, session: JoinSession, row: DecodeRow) -> None:
        if row.finish is FinishReason.CANCELLED:
            session.done(row.job, _cancel_error(row), row.largest_batch)
            return
        output = row.output()
        session.done(row.job, self._model.result(row.job.batch_input, output), row.largest_batch)

    def _drop_cancelled(self, session: JoinSession) -> None:
        for job in [job for job in self._waiting if job.ctx.cancelled]:
            self._waiting.remove(job)
            session.done(job, job.ctx.cancel.error or JobCancelled("cancelled"), 0)
        for row in self._rows:
            if row.finish is None and row.ctx.cancelled:
                row.finish = FinishReason.CANCELLED
        self._leave(session)

    def _leave(self, session: JoinSession) -> None:
        """Ends the finished rows and cuts them out of the batch."""
        staying = [i for i, row in enumerate(self._rows) if row.finish is None]
        if len(staying) == len(self._rows):
            return
        for row in self._rows:
            if row.finish is not None:
                self._end(session, row)
        self._rows = [self._rows[i] for i in staying]
        if not staying:
            self._batch = None
        elif self._batch is not None:
            self._batch.keep(staying)

    # --- rows joining ------------------------------------------------------------------------

    def _admit(self, session: JoinSession) -> None:
        """Prefills the next waiting jobs and merges them into the batch."""
        model = self._model
        jobs = self._admission()
        self._waiting = [job for job in self._waiting if job not in jobs]
        try:
            starts = [model.row_start(job.batch_input) for job in jobs]
            with torch.inference_mode():
                prefill = model.prefill([job.batch_input for job in jobs])
        except Exception as exc:  # these newcomers' inputs failed; the running rows go on
            for job in jobs:
                session.done(job, exc, len(jobs))
            return
        rows = [
            DecodeRow.open(job, job.ctx, start, model.tokenizer, model.device)
            for job, start in zip(jobs, starts, strict=True)
        ]
        tokens = self._choose(rows, prefill.logits)
        with held_reports():  # every newcomer's first token reaches the loop in one wake-up
            for row, token in zip(rows, tokens, strict=True):
                row.advance(token, model.eos_ids)
        if self._batch is None:
            self._batch = KvBatch(prefill)
        else:
            self._batch.merge(prefill)
        self._rows += rows
        self._leave(session)

    def _admission(self) -> list[Any]:
        """The jobs the next prefill takes: those of the first waiting job's group, in arrival
        order, within the prefill token budget (the first one always)."""
        model = self._model
        group = model.prefill_group(self._waiting[0].batch_input)
        budget = self._prefill_tokens
        chosen: list[Any] = []
        longest = 0
        for job in self._waiting:
            if model.prefill_group(job.batch_input) != group:
                continue
            if budget:
                length = max(longest, _prompt_length(model, job.batch_input))
                if chosen and (len(chosen) + 1) * length > budget:
                    break
                longest = length
            chosen.append(job)
        return chosen

    # --- one step ----------------------------------------------------------------------------

    def _step(self, session: JoinSession) -> None:
        assert self._batch is not None
        size = len(self._rows)
        for row in self._rows:
            row.largest_batch = max(row.largest_batch, size)
        inputs = self._batch.step_inputs([row.generated[-1] for row in self._rows])
        with torch.inference_mode():
            logits = self._model.model(**inputs, logits_to_keep=1).logits[:, -1, :]
        with held_reports():  # one wake-up of the loop per step, not two per row
            for row, token in zip(self._rows, self._choose(self._rows, logits), strict=True):
                row.advance(token, self._model.eos_ids)
            self._leave(session)

    @staticmethod
    def _choose(rows: list[DecodeRow], logits: torch.Tensor) -> list[int]:
        """Each row's next token: one argmax for the plain greedy rows, the rest their own."""
        # In float32, as transformers' generate takes its scores (exact for bf16/fp16 logits),
        # and argmax over bf16 on CPU is 4x slower than the conversion and argmax together.
        tokens = torch.argmax(logits.float(), dim=-1).tolist()
        for index, row in enumerate(rows):
            if not row.plain_greedy:
                tokens[index] = row.choose(logits[index])
        return tokens


class _LocalJob:
    """A job of a run driven in-process (warm-up, tests): what JoinSession hands over."""

    def __init__(self, batch_input: Any, ctx: JobContext) -> None:
        self.job_id = ctx.job_id
        self.batch_input = batch_input
        self.ctx = ctx
        self.token = ctx.cancel


def decode_together(
    model: DecodeModel, prepared: list[Any], contexts: list[JobContext] | None = None
) -> list[Any]:
    """Runs `prepared` as one joined run without an executor (they all join at the first step)
    and returns each one's result or Exception, in order: warm-up, and the check that a model
    can batch at all."""
    if contexts is None:
        contexts = [JobContext(f"local-{i}", "chat") for i in range(len(prepared))]
    jobs = [_LocalJob(p, ctx) for p, ctx in zip(prepared, contexts, strict=True)]
    results: dict[int, Any] = {}
    session = JoinSession(len(jobs), lambda job, value, size: results.__setitem__(id(job), value))
    for job in jobs:
        session.admit(job)
    DecodeLoop(model).run(session)
    return [results.get(id(job), RuntimeError("no result")) for job in jobs]
