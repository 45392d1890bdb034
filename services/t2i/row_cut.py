"""Cutting cancelled rows out of a running denoising batch, so the rows left stop paying for
them from the next step on.

diffusers' step-end callback may hand back new values for the loop tensors it was given
(`callback_on_step_end_tensor_inputs`). Where a family's loop rebuilds every per-row input
from those tensors at each step (Stable Diffusion 1.x/2.x: the latents and the prompt
embeddings, the latter stacked [negative; positive] under guidance), rows can be dropped there.
Three more places hold rows, and are cut with them: the scheduler's multistep state (PNDM's
`ets`, DPM-Solver's `model_outputs`, Heun's `sample`...: tensors shaped like the latents), the
list of per-image generators that ancestral schedulers draw from (the pipeline keeps the list
object it was given), and a per-row guidance scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from services.t2i.batching import RowGuidance


class RowCutter:
    """Drops image rows from the loop of one pipeline call (device thread only)."""

    def __init__(self, generators: list[torch.Generator], guidance: Any) -> None:
        self._generators = generators  # the very list the pipeline was called with
        self._guidance = guidance

    def cut(self, pipe: Any, tensors: dict[str, Any], keep: Sequence[int]) -> dict[str, Any]:
        """The loop tensors with only the image rows `keep` left; the scheduler, generators
        and guidance are cut in place."""
        latents = tensors["latents"]
        images = int(latents.shape[0])
        index = torch.tensor(list(keep), dtype=torch.long, device=latents.device)
        stacked = torch.cat([index, index + images])
        cut: dict[str, torch.Tensor] = {}
        for name, tensor in tensors.items():
            if not isinstance(tensor, torch.Tensor) or tensor.ndim == 0:
                continue
            if tensor.shape[0] == images:
                cut[name] = tensor.index_select(0, index.to(tensor.device))
            elif tensor.shape[0] == 2 * images:  # [negative; positive] under guidance
                cut[name] = tensor.index_select(0, stacked.to(tensor.device))
        _cut_scheduler(pipe.scheduler, index, images, latents.ndim)
        self._generators[:] = [self._generators[i] for i in keep]
        if isinstance(self._guidance, RowGuidance):
            self._guidance.scales = tuple(self._guidance.scales[i] for i in keep)
        return cut


def _cut_scheduler(scheduler: Any, index: torch.Tensor, images: int, ndim: int) -> None:
    def holds_rows(value: Any) -> bool:
        return isinstance(value, torch.Tensor) and value.ndim == ndim and value.shape[0] == images

    def cut(value: torch.Tensor) -> torch.Tensor:
        return value.index_select(0, index.to(value.device))

    for name, value in list(vars(scheduler).items()):
        if holds_rows(value):
            setattr(scheduler, name, cut(value))
        elif isinstance(value, list) and any(holds_rows(item) for item in value):
            setattr(scheduler, name, [cut(item) if holds_rows(item) else item for item in value])
