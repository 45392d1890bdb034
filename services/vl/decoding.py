"""The vl engine's side of iteration-level batching (services.runtime.chat.continuous): how a
prepared chat becomes a decode row and how newcomers are prefilled.

Newcomers that arrived together and carry the same kinds of tensors are left-padded into one
prefill (services.vl.batching.collate). Positions: Qwen2-VL-style models place image tokens on
a 3-D rotary grid, so the next text position of a row is its count of real tokens plus the
offset (rope delta) the model worked out in the prefill; other models count real tokens.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import torch

from services.runtime.chat.continuous import DecodeModel
from services.runtime.chat.kv_batch import KvBatch, Prefill
from services.runtime.chat.rows import RowStart
from services.vl import batching

if TYPE_CHECKING:
    from services.vl.engine import PreparedChat, VLEngine


class VLDecodeModel(DecodeModel):
    def __init__(self, engine: VLEngine) -> None:
        self._engine = engine
        self.model = engine.model
        self.tokenizer = engine.tokenizer
        self.eos_ids = engine.eos_ids

    def row_start(self, prepared: PreparedChat) -> RowStart:
        ids = prepared.inputs["input_ids"][0].tolist()
        return RowStart(prepared.plan, prepared.input_tokens, tuple(ids), prepared.stream)

    def prefill_group(self, prepared: PreparedChat) -> Hashable:
        return prepared.batch_key

    def prefill(self, prepared: list[PreparedChat]) -> Prefill:
        rows = [p.inputs for p in prepared]
        stacked = batching.collate(rows, self._engine.pad_token_id) if len(rows) > 1 else rows[0]
        if stacked is None:  # per-image shapes that do not stack: one prefill each
            parts = [self._prefill(row) for row in rows]
            joined = KvBatch(parts[0])
            for part in parts[1:]:
                joined.merge(part)
            logits = torch.cat([part.logits for part in parts])
            return Prefill(logits, joined.cache, joined.mask, joined.positions)
        return self._prefill(stacked)

    def _prefill(self, inputs: dict[str, torch.Tensor]) -> Prefill:
        inputs = self._engine.to_device(inputs)
        mask = inputs["attention_mask"]
        inner = getattr(self.model, "model", None)
        rotary_grid = "image_grid_thw" in inputs and hasattr(inner, "rope_deltas")
        kwargs: dict[str, Any] = {}
        if not rotary_grid:
            kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        else:
            inner.rope_deltas = None  # worked out afresh from this prompt
        out = self.model(**inputs, **kwargs, use_cache=True, logits_to_keep=1)
        positions = mask.long().sum(-1)
        if rotary_grid and inner.rope_deltas is not None:
            positions = positions + inner.rope_deltas.reshape(-1).to(positions.device)
            inner.rope_deltas = None
        return Prefill(out.logits[:, -1, :], out.past_key_values, mask.long(), positions)
