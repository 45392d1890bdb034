"""Stacking prepared single requests into one left-padded batch for generate.

Requests are tokenized and their images preprocessed one by one in the CPU pool (so the device
thread never resizes images); a batch then only needs collating: per-token tensors
(input_ids, attention_mask, mm_token_type_ids, ...) are left-padded to the longest prompt,
since decoder-only generation appends to the right, and per-image tensors (pixel_values,
image_grid_thw) are concatenated in row order, which is the order the image placeholder tokens
appear in the flattened batch.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

# Per-token tensors and the value their padding takes; others pad with 0.
_PAD_VALUES = {"attention_mask": 0}


def _per_token(key: str, rows: Sequence[dict[str, torch.Tensor]]) -> bool:
    """True when `key` is shaped (1, prompt_length, ...) like input_ids in every row. A per-image
    tensor can match by chance only if all prompts have one length, and then left padding is a
    no-op and both ways of stacking agree."""
    for row in rows:
        value, length = row[key], row["input_ids"].shape[-1]
        if value.dim() < 2 or value.shape[0] != 1 or value.shape[1] != length:
            return False
    return True


def batch_key(inputs: dict[str, torch.Tensor]) -> Hashable:
    """Requests batch together only when they carry the same kinds of tensors (a text-only
    request has no pixel_values to concatenate)."""
    return tuple(sorted(inputs))


def collate(
    rows: Sequence[dict[str, torch.Tensor]], pad_token_id: int
) -> dict[str, torch.Tensor] | None:
    """One left-padded batch from single-request inputs, or None when they cannot be stacked
    (different keys or per-image shapes): the caller then runs them one by one."""
    keys = set(rows[0])
    if any(set(row) != keys for row in rows):
        return None
    per_token = {key for key in keys if _per_token(key, rows)}
    longest = max(row["input_ids"].shape[1] for row in rows)
    batch: dict[str, torch.Tensor] = {}
    for key in sorted(keys):
        values = [row[key] for row in rows]
        if key in per_token:
            pad = pad_token_id if key == "input_ids" else _PAD_VALUES.get(key, 0)
            batch[key] = torch.cat([_left_pad(v, longest, pad) for v in values], dim=0)
            continue
        try:
            batch[key] = torch.cat(values, dim=0)
        except RuntimeError:  # per-image tensors of different shapes (fixed-grid processors)
            return None
    return batch


def _left_pad(value: torch.Tensor, length: int, pad: int) -> torch.Tensor:
    missing = length - value.shape[1]
    if missing == 0:
        return value
    filler = value.new_full((value.shape[0], missing, *value.shape[2:]), pad)
    return torch.cat([filler, value], dim=1)
