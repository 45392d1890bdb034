"""The decode batch's memory: one left-padded KV cache for rows that joined at different times.

A newcomer's prompt is prefilled on its own (or with the other newcomers of its step) into a
cache of its own; merging left-pads the shorter of the two caches to the longer one's length
and stacks them along the batch, and the attention mask marks the padding so no row ever
attends to it. A row that leaves is cut out of the batch, and columns that only padding fills
any more are trimmed away. Positions are per row (each row's count of real tokens, plus any
offset its model's rotary scheme adds), since padding must not shift them.

Only caches made of plain DynamicLayer layers (full attention) can be merged like this; a
model with sliding-window or other layers cannot join a batch (`mergeable`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer


@dataclass
class Prefill:
    """What a prefill gives the batch: the last position's logits (rows, vocab), the cache,
    the attention mask (rows, length; 0 marks padding) and each row's next position."""

    logits: torch.Tensor
    cache: Any
    mask: torch.Tensor
    positions: torch.Tensor  # (rows,), long


def mergeable(cache: Any) -> bool:
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _left_pad(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class KvBatch:
    """The running rows' cache, mask and positions, in row order."""

    def __init__(self, prefill: Prefill) -> None:
        if not mergeable(prefill.cache):
            raise ValueError("this model's KV cache cannot be merged across requests")
        self.cache = prefill.cache
        self.mask = prefill.mask
        self.positions = prefill.positions

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    def merge(self, other: Prefill) -> None:
        """Appends the rows of `other` after the running ones."""
        if not mergeable(other.cache):
            raise ValueError("this model's KV cache cannot be merged across requests")
        length = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat(
                [_left_pad(mine.keys, length, 2), _left_pad(theirs.keys, length, 2)]
            )
            mine.values = torch.cat(
                [_left_pad(mine.values, length, 2), _left_pad(theirs.values, length, 2)]
            )
        self.mask = torch.cat([_left_pad(self.mask, length, 1), _left_pad(other.mask, length, 1)])
        self.positions = torch.cat([self.positions, other.positions])

    def keep(self, indices: list[int]) -> None:
        """Keeps only the rows at `indices` (in that order) and trims all-padding columns."""
        index = torch.tensor(indices, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        used = torch.nonzero(mask.any(dim=0))
        start = int(used[0, 0]) if used.numel() else mask.shape[1]
        self.mask = mask[:, start:]
        self.positions = self.positions.index_select(0, index)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]

    def step_inputs(self, tokens: list[int]) -> dict[str, Any]:
        """The forward arguments of one decode step that feeds each row its last token; the
        mask and positions advance with it."""
        device = self.mask.device
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=1)
        inputs = {
            "input_ids": torch.tensor(tokens, dtype=torch.long, device=device).unsqueeze(1),
            "attention_mask": self.mask,
            "position_ids": self.positions.unsqueeze(1),
            "past_key_values": self.cache,
            "use_cache": True,
        }
        self.positions = self.positions + 1
        return inputs
