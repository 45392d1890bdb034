"""A plain causal LM (AutoModelForCausalLM: Llama, Qwen2, SmolLM2, ...) in the decode loop of
services.runtime.chat.continuous: prompts already tokenized on the CPU pool, newcomers
left-padded into one prefill, positions counting each row's real tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from services.runtime.chat.continuous import DecodeModel
from services.runtime.chat.kv_batch import Prefill
from services.runtime.chat.rows import RowStart
from services.runtime.chat.sampling import SamplingPlan


@dataclass(frozen=True)
class TokenizedPrompt:
    """A text chat ready to join the decode batch: its prompt ids (chat template applied) and
    its plan, max_new_tokens already capped by the context's room."""

    ids: tuple[int, ...]
    plan: SamplingPlan
    stream: bool


class Joinable(Protocol):
    """A prepared chat as the decoder reads it: a capability's own prepared type with a
    `prompt` (None: it cannot join and runs alone)."""

    @property
    def prompt(self) -> TokenizedPrompt | None: ...


class CausalLmDecoder(DecodeModel):
    def __init__(self, model: Any, tokenizer: Any, eos_ids: frozenset[int]) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        pad = tokenizer.pad_token_id
        self._pad = int(pad if pad is not None else min(eos_ids))

    def row_start(self, prepared: Joinable) -> RowStart:
        prompt = _prompt(prepared)
        return RowStart(prompt.plan, len(prompt.ids), prompt.ids, prompt.stream)

    def prefill(self, prepared: list[Joinable]) -> Prefill:
        prompts = [_prompt(p).ids for p in prepared]
        longest = max(len(ids) for ids in prompts)
        ids = torch.full((len(prompts), longest), self._pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), longest), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, longest - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, longest - len(prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=True,
            logits_to_keep=1,
        )
        return Prefill(out.logits[:, -1, :], out.past_key_values, mask, mask.sum(-1))


def _prompt(prepared: Joinable) -> TokenizedPrompt:
    prompt = prepared.prompt
    if prompt is None:
        raise ValueError("this chat cannot join the decode batch (it runs alone)")
    return prompt
