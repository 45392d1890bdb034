"""Pieces every transformers family shares around `generate()`: sampling arguments, a streamer
that turns token ids into clean text deltas (the runtime's TextAssembler: never half a UTF-8
character, never a stop string), and a stopping criterion that lets the job stop between
tokens (cancel, deadline, barge-in); and the decode-loop side of a plain causal LM, for text
chats that decode together (iteration-level batching)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from services.omni.turns import ChatResult, FloatAudio
from services.runtime.chat.causal_lm import CausalLmDecoder
from services.runtime.chat.decoding import TextAssembler
from services.runtime.chat.messages import ChatOutput, FinishReason
from services.runtime.chat.sampling import SamplingPlan


@dataclass
class GenerationHooks:
    """How a family reports and is steered while it generates (called on the device thread)."""

    on_text: Callable[[str, int], None]  # (new text, output tokens so far)
    should_stop: Callable[[], bool]  # True: stop now (barge-in); may raise to cancel the job
    # Native speech pieces (float, traits.speech_sample_rate) as they are made; a family that
    # can stream its speech does so only when this is given (and reports Generated.streamed).
    on_audio: Callable[[FloatAudio], None] | None = None
    # The prompt's token count, once the family has tokenized it (a cancelled stream reports
    # it as its usage so far).
    on_prompt: Callable[[int], None] | None = None

    def prompt(self, input_tokens: int) -> None:
        if self.on_prompt is not None:
            self.on_prompt(input_tokens)


def sampling_kwargs(sampling: SamplingPlan) -> dict[str, Any]:
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
    """Receives the ids generate() produces and emits text deltas through `on_text` (text,
    output tokens so far); `stopped` tells the stopping criterion a stop string appeared (the
    reply is cut before it)."""

    def __init__(
        self,
        tokenizer: Any,
        on_text: Callable[[str, int], None],
        stop: tuple[str, ...] = (),
        eos_ids: frozenset[int] = frozenset(),
    ) -> None:
        self._assembler = TextAssembler(tokenizer, stop)
        self._on_text = on_text
        self._eos_ids = eos_ids
        self._prompt_seen = False
        self.ids: list[int] = []
        self.saw_eos = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # the first call carries the prompt
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            if self.stopped:
                return
            self.ids.append(token)
            if token in self._eos_ids:
                self.saw_eos = True
            self._send(self._assembler.push(token))

    def end(self) -> None:
        self._send(self._assembler.finish())

    def _send(self, text: str) -> None:
        if text:
            self._on_text(text, len(self.ids))

    @property
    def stopped(self) -> bool:
        return self._assembler.stopped

    @property
    def sent(self) -> str:
        """The reply so far: exactly the deltas sent."""
        return self._assembler.text

    @property
    def output_tokens(self) -> int:
        return len(self.ids)

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


# ---- decoding chats together (services.runtime.chat.continuous) -----------------------------


class OmniChatDecoder(CausalLmDecoder):
    """A chat LLM family's model in the decode loop; its rows end as omni chat results (text
    only: spoken replies never join)."""

    def result(self, prepared: Any, output: ChatOutput) -> ChatResult:
        return ChatResult(
            text=output.text,
            finish_reason=output.finish_reason,
            input_tokens=output.input_tokens,
            output_tokens=output.output_tokens,
            seed=output.seed,
        )
