"""The chat core's decode loop on a small random-weight Llama: rows that join at different
steps (caches of different lengths merged with left padding, trimmed as rows leave) give the
same greedy tokens as each prompt generated alone with transformers, and each row keeps its own
limit, stop sequence, sampling seed and cancel."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from services.runtime.batching import JoinSession
from services.runtime.chat.causal_lm import CausalLmDecoder, TokenizedPrompt
from services.runtime.chat.continuous import DecodeLoop, decode_together
from services.runtime.chat.kv_batch import KvBatch
from services.runtime.chat.messages import ChatOutput, FinishReason, TextDelta
from services.runtime.chat.sampling import SamplingPlan
from services.runtime.errors import JobCancelled
from services.runtime.job_context import JobContext

EOS = 2


class ByteTokenizer:
    """Token t decodes to chr(65 + t % 26): enough text for stop sequences and deltas."""

    pad_token_id = 0

    def decode(self, ids: list[int], *, skip_special_tokens: bool) -> str:
        return "".join(chr(65 + t % 26) for t in ids if not (skip_special_tokens and t == EOS))


@pytest.fixture(scope="module")
def model() -> Any:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


class Prepared:
    def __init__(self, ids: list[int], plan: SamplingPlan, stream: bool = False) -> None:
        self.prompt = TokenizedPrompt(tuple(ids), plan, stream)


def greedy_alone(model: Any, ids: list[int], tokens: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=tokens,
            do_sample=False,
            eos_token_id=EOS,
            pad_token_id=0,
        )
    return out[0, len(ids) :].tolist()


def text_of(tokens: list[int]) -> str:
    return ByteTokenizer().decode(tokens, skip_special_tokens=True)


PROMPTS = ([5, 17, 33, 9], [44, 12], [7, 8, 9, 10, 11, 12, 13, 14, 15], [101])


def test_rows_joining_at_different_steps_decode_as_alone(model: Any) -> None:
    decoder = CausalLmDecoder(model, ByteTokenizer(), frozenset({EOS}))
    lengths = (12, 5, 9, 7)
    prepared = [Prepared(ids, SamplingPlan(n)) for ids, n in zip(PROMPTS, lengths, strict=True)]
    contexts = [JobContext(f"row-{i}", "chat") for i in range(len(prepared))]
    results: dict[str, Any] = {}
    session = JoinSession(8, lambda job, value, size: results.__setitem__(job.job_id, value))

    class Arriving:
        """Admits the next row at each prefill, so each joins one step after the one before."""

        def __init__(self, jobs: list[Any]) -> None:
            self.jobs = jobs

        def __getattr__(self, name: str) -> Any:
            return getattr(decoder, name)

        def prefill(self, batch: list[Any]) -> Any:
            if self.jobs:
                session.admit(self.jobs.pop(0))
            return decoder.prefill(batch)

    jobs = [_Job(p, ctx) for p, ctx in zip(prepared, contexts, strict=True)]
    session.admit(jobs[0])
    DecodeLoop(Arriving(jobs[1:])).run(session)  # type: ignore[arg-type]
    for ids, n, ctx in zip(PROMPTS, lengths, contexts, strict=True):
        output = results[ctx.job_id]
        assert isinstance(output, ChatOutput)
        expected = greedy_alone(model, ids, n)
        assert output.output_tokens == len(expected)
        assert output.text == text_of(expected)


class _Job:
    def __init__(self, batch_input: Any, ctx: JobContext) -> None:
        self.job_id = ctx.job_id
        self.batch_input = batch_input
        self.ctx = ctx
        self.token = ctx.cancel


def test_each_row_keeps_its_limit_stop_seed_and_cancel(model: Any) -> None:
    decoder = CausalLmDecoder(model, ByteTokenizer(), frozenset({EOS}))
    greedy = greedy_alone(model, PROMPTS[0], 12)
    stop = text_of(greedy)[3:5]
    sampled = SamplingPlan(10, temperature=1.0, top_k=50, top_p=0.95, seed=42)
    prepared = [
        Prepared(PROMPTS[0], SamplingPlan(12, stop=(stop,)), stream=True),
        Prepared(PROMPTS[1], sampled),
        Prepared(PROMPTS[2], SamplingPlan(3)),
        Prepared(PROMPTS[3], SamplingPlan(30)),
    ]
    deltas: list[Any] = []
    contexts = [JobContext(f"row-{i}", "chat", on_output=deltas.append) for i in range(4)]
    contexts[3].cancel.cancel(JobCancelled("gone"))
    first = decode_together(decoder, prepared, contexts)
    assert first[0].finish_reason is FinishReason.STOP
    assert first[0].text == text_of(greedy).split(stop)[0]
    assert "".join(d.text for d in deltas if isinstance(d, TextDelta)) == first[0].text
    assert first[2].output_tokens == 3
    assert first[2].finish_reason is FinishReason.LENGTH
    assert isinstance(first[3], JobCancelled)
    # The sampled row draws from its own seeded generator: the same text alone or batched.
    [alone] = decode_together(decoder, [prepared[1]])
    assert alone.text == first[1].text


def test_leaving_rows_trim_the_padding(model: Any) -> None:
    decoder = CausalLmDecoder(model, ByteTokenizer(), frozenset({EOS}))
    with torch.inference_mode():
        long = decoder.prefill([Prepared(list(range(3, 23)), SamplingPlan(1))])
        short = decoder.prefill([Prepared([4, 5], SamplingPlan(1))])
    batch = KvBatch(long)
    batch.merge(short)
    assert batch.mask.shape == (2, 20)
    assert batch.mask[1].sum() == 2
    batch.keep([1])
    assert batch.mask.shape == (1, 2)
    assert batch.cache.layers[0].keys.shape[2] == 2
    assert batch.positions.tolist() == [2]


def test_a_prefill_token_budget_splits_newcomers_across_steps(model: Any) -> None:
    """Newcomers that together pass the budget (rows x the longest prompt) prefill over several
    steps in arrival order, the first always; each still decodes as it would alone."""
    decoder = CausalLmDecoder(model, ByteTokenizer(), frozenset({EOS}))
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[3], [60, 61, 62]]
    prefills: list[int] = []

    class Counting:
        def __getattr__(self, name: str) -> Any:
            return getattr(decoder, name)

        def prefill(self, batch: list[Any]) -> Any:
            prefills.append(len(batch))
            return decoder.prefill(batch)

    contexts = [JobContext(f"row-{i}", "chat") for i in range(len(prompts))]
    pairs = zip(prompts, contexts, strict=True)
    jobs = [_Job(Prepared(ids, SamplingPlan(6)), ctx) for ids, ctx in pairs]
    results: dict[str, Any] = {}
    session = JoinSession(8, lambda job, value, size: results.__setitem__(job.job_id, value))
    for job in jobs:
        session.admit(job)
    # 2 x 4 fits 8; a third row (prompt 9) would make 27; 9 alone passes the budget but the
    # first always goes; then 2 rows of up to 3 tokens fit.
    DecodeLoop(Counting(), prefill_tokens=8).run(session)  # type: ignore[arg-type]
    assert prefills == [2, 1, 2]
    for ids, ctx in zip(prompts, contexts, strict=True):
        assert results[ctx.job_id].text == text_of(greedy_alone(model, ids, 6))

    prefills.clear()
    session = JoinSession(8, lambda job, value, size: results.__setitem__(job.job_id, value))
    for job in [_Job(job.batch_input, JobContext(job.job_id, "chat")) for job in jobs]:
        session.admit(job)
    DecodeLoop(Counting()).run(session)  # type: ignore[arg-type]
    assert prefills == [5]  # no budget: all together
