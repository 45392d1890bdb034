"""Qwen2.5-Omni, native in transformers: the thinker reads text, images and audio and writes the
text (streamed token by token); the talker turns the thinker's states into codec tokens and
token2wav into a 24 kHz waveform, with one of the checkpoint's built-in speakers (`spk_dict.pt`).
What it shares with Qwen3-Omni (processor, prompt, KV reuse in sessions) is in qwen_omni_base.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Qwen2_5OmniProcessor

from services.omni.families.qwen_omni_base import (
    SPEECH_SAMPLE_RATE,
    QwenOmniBase,
    load_omni_processor,
    omni_processor_class,
)
from services.omni.families.streaming_vocoder import Token2WavStream

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "OMNI_CHAT_TEMPLATE",
    "SPEECH_SAMPLE_RATE",
    "OmniProcessor",
    "QwenOmniFamily",
    "load_processor",
]

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

# Qwen2_5OmniProcessor that accepts a missing video processor (no torchvision here).
OmniProcessor = omni_processor_class(Qwen2_5OmniProcessor)


def load_processor(folder: Path) -> Any:
    return load_omni_processor(folder, OmniProcessor, OMNI_CHAT_TEMPLATE)


class QwenOmniFamily(QwenOmniBase):
    family_name = "qwen2_5_omni"
    model_class_name = "Qwen2_5OmniForConditionalGeneration"
    display_name = "Qwen2.5-Omni"
    default_template = OMNI_CHAT_TEMPLATE
    processor_class = OmniProcessor

    def speakers(self) -> dict[str, Any]:
        return {name: name for name in self.model.speaker_map}

    def talker_layers(self) -> tuple[int, ...]:
        # The talker reads the embeddings and the last layer of every thinker token.
        return (0, -1)

    def speech_system_prompt(self) -> str:
        return DEFAULT_SYSTEM_PROMPT

    def speech_stream(
        self, speaker: Any, emit: Callable[[np.ndarray], None], halted: Callable[[], bool]
    ) -> Token2WavStream:
        return Token2WavStream(
            self.model, self.model.speaker_map[speaker], self._speech_chunk, emit, halted
        )

    def stored_talker_state(self, layer: int, states: torch.Tensor, ids: torch.Tensor) -> Any:
        if layer != 0:
            return states
        # The model's talker code zeroes the embeddings of image and audio placeholders when
        # that media is among the inputs; a reused prefix's media is not, so keep them zeroed.
        config = self.model.config.thinker_config
        media = (
            (ids == config.audio_token_index)
            | (ids == config.image_token_index)
            | (ids == config.video_token_index)
        )
        return states.masked_fill(media.unsqueeze(-1), 0)
