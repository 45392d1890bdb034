"""Plain chat LLMs (AutoModelForCausalLM with a chat template): text in, text out. The engine
gives them ears and a voice (ASR and TTS). In a live session the KV cache of the conversation
so far is kept, so each turn only computes its new tokens."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from services.omni.families.base import (
    ConversationState,
    Family,
    FamilyTraits,
    Generated,
    SpeechTarget,
)
from services.omni.generation import (
    GenerationHooks,
    HookStopping,
    TextDeltaStreamer,
    sampling_kwargs,
)
from services.runtime.chat.messages import Message, TextPart
from services.runtime.chat.sampling import ModelDefaults, SamplingPlan
from services.runtime.devices import TorchOptions, device_memory_bytes, maybe_compile
from services.runtime.errors import InvalidArgument

log = logging.getLogger("mmserve.omni")


def eos_ids(generation_config: Any, tokenizer: Any) -> frozenset[int]:
    found = getattr(generation_config, "eos_token_id", None)
    ids = set(found if isinstance(found, list) else [found] if found is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


class ChatLlmFamily(Family):
    def __init__(
        self,
        folder: Path,
        options: TorchOptions,
        *,
        max_context_tokens: int = 0,
        trust_remote_code: bool = False,
    ) -> None:
        self._folder = folder
        self._options = options
        self._max_context = max_context_tokens
        self._trust = trust_remote_code

    def load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(
            str(self._folder), trust_remote_code=self._trust
        )
        if not self.tokenizer.chat_template:
            raise ValueError(f"{self._folder} has no chat template; omni needs a chat model")
        model = AutoModelForCausalLM.from_pretrained(
            str(self._folder),
            dtype=self._options.dtype,
            attn_implementation=self._options.attention,
            trust_remote_code=self._trust,
        )
        self.model = model.to(self._options.device).eval()
        self.model = maybe_compile(self.model, self._options.compile, self._options.compile_mode)
        config = self.model.config
        context = int(getattr(config, "max_position_embeddings", 0) or 0)
        if self._max_context:
            context = min(context, self._max_context) if context else self._max_context
        self._eos = eos_ids(self.model.generation_config, self.tokenizer)
        self.traits = FamilyTraits(
            family=str(config.model_type),
            architecture=type(self.model).__name__,
            max_context_tokens=context,
            sampling_defaults=ModelDefaults.from_generation_config(self.model.generation_config),
        )

    def prompt_ids(self, messages: tuple[Message, ...]) -> list[int]:
        """The chat-template token ids of `messages` plus the assistant header."""
        chat = [{"role": m.role.value, "content": _text_of(m)} for m in messages]
        ids = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)

    def generate(
        self,
        messages: tuple[Message, ...],
        sampling: SamplingPlan,
        hooks: GenerationHooks,
        *,
        speech: SpeechTarget | None = None,
        state: ConversationState | None = None,
    ) -> Generated:
        ids = self.prompt_ids(messages)
        max_new = cap_new_tokens(len(ids), sampling.max_new_tokens, self.traits.max_context_tokens)
        hooks.prompt(len(ids))
        streamer = TextDeltaStreamer(self.tokenizer, hooks.on_text, sampling.stop, self._eos)
        stopping = HookStopping(streamer, hooks.should_stop)
        device = self._options.device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        kwargs: dict[str, Any] = sampling_kwargs(sampling)
        kwargs["max_new_tokens"] = max_new
        cache = _reusable_cache(state, ids)
        if cache is not None:
            kwargs["past_key_values"] = cache
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                streamer=streamer,
                stopping_criteria=[stopping],
                pad_token_id=self.tokenizer.pad_token_id or next(iter(self._eos), None),
                return_dict_in_generate=True,
                **kwargs,
            )
        if state is not None:
            state.ids = out.sequences[0].tolist()
            state.cache = out.past_key_values
        return Generated(
            text=streamer.sent,
            finish=streamer.finish_reason(max_new, stopping.interrupted),
            input_tokens=len(ids),
            output_tokens=streamer.output_tokens,
        )

    def memory_bytes(self) -> int | None:
        return device_memory_bytes(self._options.device)


def _text_of(message: Message) -> str:
    if any(not isinstance(part, TextPart) for part in message.content):
        raise ValueError("chat LLM messages must be text only (the engine transcribes audio)")
    return message.text()


def cap_new_tokens(prompt_tokens: int, wanted: int, context: int) -> int:
    """`wanted` bounded by the room the context leaves; InvalidArgument when there is none."""
    if not context:
        return wanted
    room = context - prompt_tokens
    if room < 1:
        raise InvalidArgument.for_field(
            "messages", f"the conversation is {prompt_tokens} tokens; the context holds {context}"
        )
    return min(wanted, room)


def shared_prefix(old: list[int], new: list[int]) -> int:
    """How many leading tokens two id lists have in common."""
    shared = 0
    for a, b in zip(old, new, strict=False):
        if a != b:
            break
        shared += 1
    return shared


def crop_cache(cache: Any, keep: int) -> None:
    """Cuts a KV cache back to its first `keep` tokens."""
    cached = int(cache.get_seq_length())
    if keep < cached:
        # transformers 5 crops by the number of tokens to drop, given as a negative number.
        cache.crop(keep - cached)


def _reusable_cache(state: ConversationState | None, ids: list[int]) -> Any:
    """The session's KV cache cropped to the prefix it shares with `ids` (at least one new
    token must remain to compute), or None when nothing can be reused."""
    if state is None or state.cache is None:
        return None
    cached = int(state.cache.get_seq_length())
    keep = min(shared_prefix(state.ids, ids), len(ids) - 1, cached)
    if keep <= 0 or not hasattr(state.cache, "crop"):
        state.cache = None
        return None
    crop_cache(state.cache, keep)
    return state.cache
