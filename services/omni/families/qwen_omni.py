"""Qwen2.5-Omni, native in transformers: the thinker reads text, images and audio and writes the
text (streamed token by token); the talker turns the thinker's states into codec tokens and
token2wav into a 24 kHz waveform, with one of the checkpoint's built-in speakers.

Without torchvision the stock processor cannot be built (its video processor needs it), so it is
assembled from its parts with the class check skipped for the missing video processor only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import Qwen2_5OmniProcessor, StoppingCriteria

from services.omni.families.base import (
    ConversationState,
    Family,
    FamilyTraits,
    Generated,
    SpeechTarget,
)
from services.omni.families.chat_llm import eos_ids, generation_defaults
from services.omni.generation import (
    GenerationHooks,
    HookStopping,
    TextDeltaStreamer,
    sampling_kwargs,
)
from services.omni.turns import AudioPart, ImagePart, Message, Role, Sampling, TextPart
from services.runtime.devices import TorchOptions, device_memory_bytes, maybe_compile
from services.runtime.errors import InvalidArgument

log = logging.getLogger("mmserve.omni")

SPEECH_SAMPLE_RATE = 24000  # BigVGAN: 240 samples per mel frame at 100 frames/s
# The system prompt the Qwen2.5-Omni model card requires for speech output.
DEFAULT_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
    "perceiving auditory and visual inputs, as well as generating text and speech."
)
OMNI_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}"
    "{{ m['content'] }}{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_bos|><|IMAGE|><|vision_eos|>{% elif c['type'] == 'audio' %}"
    "<|audio_bos|><|AUDIO|><|audio_eos|>{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class OmniProcessor(Qwen2_5OmniProcessor):
    """Qwen2_5OmniProcessor that accepts a missing video processor (no torchvision here)."""

    def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
        if argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


def load_processor(folder: Path) -> OmniProcessor:
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil, WhisperFeatureExtractor

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    template_file = folder / "chat_template.jinja"
    template = (
        template_file.read_text(encoding="utf-8")
        if template_file.is_file()
        else tokenizer.chat_template or OMNI_CHAT_TEMPLATE
    )
    return OmniProcessor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(str(folder)),
        feature_extractor=WhisperFeatureExtractor.from_pretrained(str(folder)),
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=template,
    )


class _CancelOnly(StoppingCriteria):
    """Stops the talker when the job is interrupted (it has no text to watch)."""

    def __init__(self, hooks: GenerationHooks) -> None:
        self._hooks = hooks

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> Any:
        stop = self._hooks.should_stop()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class QwenOmniFamily(Family):
    def __init__(
        self,
        folder: Path,
        options: TorchOptions,
        *,
        max_context_tokens: int = 0,
        talker_max_new_tokens: int = 4096,
    ) -> None:
        self._folder = folder
        self._options = options
        self._max_context = max_context_tokens
        self._talker_max = talker_max_new_tokens

    def load(self) -> None:
        from transformers import Qwen2_5OmniForConditionalGeneration

        self.processor = load_processor(self._folder)
        model = Qwen2_5OmniForConditionalGeneration.from_pretrained(
            str(self._folder),
            dtype=self._options.dtype,
            attn_implementation=self._options.attention,
        )
        self.model = model.to(self._options.device).eval()
        self.model.thinker = maybe_compile(
            self.model.thinker, self._options.compile, self._options.compile_mode
        )
        text_config = self.model.config.thinker_config.text_config
        context = int(getattr(text_config, "max_position_embeddings", 0) or 0)
        if self._max_context:
            context = min(context, self._max_context) if context else self._max_context
        tokenizer = self.processor.tokenizer
        self._eos = eos_ids(self.model.generation_config, tokenizer)
        if not self._eos - {None}:
            self._eos = frozenset({tokenizer.convert_tokens_to_ids("<|im_end|>")})
        self.traits = FamilyTraits(
            family="qwen2_5_omni",
            architecture=type(self.model).__name__,
            audio_input=True,
            image_input=True,
            speech_output=bool(self.model.has_talker),
            speech_sample_rate=SPEECH_SAMPLE_RATE if self.model.has_talker else 0,
            speakers=tuple(self.model.speaker_map),
            max_context_tokens=context,
            sampling_defaults=generation_defaults(self.model.generation_config),
        )

    def _inputs(self, messages: tuple[Message, ...], speech: bool) -> dict[str, Any]:
        conversation: list[dict[str, Any]] = []
        images: list[Any] = []
        audios: list[Any] = []
        if speech and (not messages or messages[0].role is not Role.SYSTEM):
            conversation.append({"role": "system", "content": DEFAULT_SYSTEM_PROMPT})
        for message in messages:
            content: list[dict[str, Any]] = []
            for part in message.parts:
                if isinstance(part, TextPart):
                    content.append({"type": "text", "text": part.text})
                elif isinstance(part, ImagePart):
                    content.append({"type": "image"})
                    images.append(part.image)
                elif isinstance(part, AudioPart):
                    content.append({"type": "audio"})
                    audios.append(part.samples)
            conversation.append({"role": message.role.value, "content": content})
        prompt = self.processor.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False
        )
        batch = self.processor(
            text=[prompt],
            images=images or None,
            audio=audios or None,
            return_tensors="pt",
            padding=True,
        )
        inputs: dict[str, Any] = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self._options.device)
                if value.is_floating_point():
                    value = value.to(self._options.dtype)
            inputs[key] = value
        return inputs

    def generate(
        self,
        messages: tuple[Message, ...],
        sampling: Sampling,
        hooks: GenerationHooks,
        *,
        speech: SpeechTarget | None = None,
        state: ConversationState | None = None,
    ) -> Generated:
        if speech is not None and speech.reference is not None:
            raise ValueError("Qwen2.5-Omni cannot clone voices (the engine checks this first)")
        inputs = self._inputs(messages, speech is not None)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        max_new = sampling.max_new_tokens
        if self.traits.max_context_tokens:
            room = self.traits.max_context_tokens - prompt_tokens
            if room < 1:
                raise InvalidArgument.for_field(
                    "messages",
                    f"the conversation is {prompt_tokens} tokens; "
                    f"the context holds {self.traits.max_context_tokens}",
                )
            max_new = min(max_new, room)
        tokenizer = self.processor.tokenizer
        streamer = TextDeltaStreamer(tokenizer, hooks.on_text, sampling.stop, self._eos)
        stopping = HookStopping(streamer, hooks.should_stop)
        thinker_kwargs = sampling_kwargs(sampling)
        thinker_kwargs.update(
            max_new_tokens=max_new,
            streamer=streamer,
            stopping_criteria=[stopping],
            eos_token_id=sorted(self._eos),
            pad_token_id=tokenizer.pad_token_id,
        )
        waveform = None
        with torch.inference_mode():
            if speech is None:
                self.model.thinker.generate(**inputs, **thinker_kwargs)
            else:
                pixels = inputs.pop("pixel_values", None)
                if pixels is not None:
                    # Un-prefixed kwargs also reach the talker, whose generate() rejects them.
                    inputs["thinker_pixel_values"] = pixels
                _, wav = self.model.generate(
                    **inputs,
                    speaker=speech.speaker or self.traits.speakers[0],
                    talker_max_new_tokens=self._talker_max,
                    talker_stopping_criteria=[_CancelOnly(hooks)],
                    **{f"thinker_{key}": value for key, value in thinker_kwargs.items()},
                )
                if not stopping.interrupted:
                    waveform = wav.reshape(-1).float().cpu().numpy()
        return Generated(
            text=streamer.sent,
            finish=streamer.finish_reason(max_new, stopping.interrupted),
            input_tokens=prompt_tokens,
            output_tokens=streamer.output_tokens,
            waveform=waveform,
        )

    def memory_bytes(self) -> int | None:
        return device_memory_bytes(self._options.device)
