"""Pieces every transformers family shares around `generate()`: sampling arguments, a streamer
that turns token ids into clean text deltas (never half a UTF-8 character, never a stop
string), and a stopping criterion that lets the job stop between tokens (cancel, deadline,
barge-in)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from services.omni.turns import FinishReason, FloatAudio, Sampling


@dataclass
class GenerationHooks:
    """How a family reports and is steered while it generates (called on the device thread)."""

    on_text: Callable[[str, int], None]  # (new text, output tokens so far)
    should_stop: Callable[[], bool]  # True: stop now (barge-in); may raise to cancel the job
    # Native speech pieces (float, traits.speech_sample_rate) as they are made; a family that
    # can stream its speech does so only when this is given (and reports Generated.streamed).
    on_audio: Callable[[FloatAudio], None] | None = None


def sampling_kwargs(sampling: Sampling) -> dict[str, Any]:
    """generate() arguments; greedy leaves the sampling knobs out so no warning is logged."""
    kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens}
    if sampling.greedy:
        kwargs["do_sample"] = False
    else:
        kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        kwargs["top_k"] = sampling.top_k or None
    if sampling.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = sampling.repetition_penalty
    return kwargs


def seed_everything(seed: int) -> None:
    """Sampling draws from torch's global generator; single flight makes that safe."""
    torch.manual_seed(seed % (2**63))


class TextDeltaStreamer(BaseStreamer):
    """Receives the ids generate() produces and emits text deltas.

    The whole reply is decoded again on each token (replies are short; this is what makes
    multi-token characters and merges come out right). Text that could be the start of a stop
    string is held back until it is known not to be one; when a stop string appears the reply
    is cut before it and `stopped` tells the stopping criterion to end generation."""

    def __init__(
        self,
        tokenizer: Any,
        on_text: Callable[[str, int], None],
        stop: tuple[str, ...] = (),
        eos_ids: frozenset[int] = frozenset(),
    ) -> None:
        self._tokenizer = tokenizer
        self._on_text = on_text
        self._stop = stop
        self._eos_ids = eos_ids
        self._prompt_seen = False
        self.ids: list[int] = []
        self.sent = ""
        self.stopped = False
        self.saw_eos = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # the first call carries the prompt
            self._prompt_seen = True
            return
        if self.stopped:
            return
        new = value.reshape(-1).tolist()
        self.ids.extend(new)
        if any(token in self._eos_ids for token in new):
            self.saw_eos = True
        self._advance(final=False)

    def end(self) -> None:
        self._advance(final=True)

    @property
    def output_tokens(self) -> int:
        return len(self.ids)

    def _advance(self, *, final: bool) -> None:
        if self.stopped:
            return
        text = self._tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = self._first_stop(text)
        if cut is not None:
            text = text[:cut]
            self.stopped = True
            final = True
        if not final:
            if text.endswith("\ufffd"):  # an unfinished multi-byte character
                text = text.rstrip("\ufffd")
            text = text[: len(text) - self._held_back(text)]
        if len(text) > len(self.sent) and text.startswith(self.sent):
            delta = text[len(self.sent) :]
            self.sent = text
            self._on_text(delta, len(self.ids))

    def _first_stop(self, text: str) -> int | None:
        hits = [index for index in (text.find(s) for s in self._stop) if index >= 0]
        return min(hits) if hits else None

    def _held_back(self, text: str) -> int:
        """Length of the longest tail of `text` that begins some stop string."""
        longest = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if stop.startswith(text[-size:]):
                    longest = size
                    break
        return longest

    def finish_reason(self, max_new_tokens: int, interrupted: bool) -> FinishReason:
        if interrupted:
            return FinishReason.CANCELLED
        if self.stopped or self.saw_eos:
            return FinishReason.STOP
        return FinishReason.LENGTH if len(self.ids) >= max_new_tokens else FinishReason.STOP


class HookStopping(StoppingCriteria):
    """Stops generation for a stop string or an interruption; `should_stop` may raise (a
    cancelled job), which ends generate() at once."""

    def __init__(self, streamer: TextDeltaStreamer, should_stop: Callable[[], bool]) -> None:
        self._streamer = streamer
        self._should_stop = should_stop
        self.interrupted = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> Any:
        if self._should_stop():
            self.interrupted = True
        done = self.interrupted or self._streamer.stopped
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)
