"""Qwen3-Omni (Qwen3OmniMoeForConditionalGeneration, native in transformers): a mixture-of-experts
thinker reads text, images and audio and writes the text (streamed token by token); the talker
(also MoE, with a code predictor for the residual codebooks) turns the thinker's states into
multi-codebook codec frames and code2wav into a 24 kHz waveform, with one of the checkpoint's
built-in speakers (`talker_config.speaker_id`). The rest is shared with Qwen2.5-Omni in
qwen_omni_base: the processor without a video processor, the prompt, KV reuse in sessions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from transformers import Qwen3OmniMoeProcessor

from services.omni.families.qwen_omni_base import (
    QwenOmniBase,
    omni_processor_class,
)
from services.omni.families.streaming_vocoder import Code2WavStream

# Placeholders as Qwen3-Omni's own template writes them; the processor expands the pad tokens.
QWEN3_OMNI_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}"
    "{{ m['content'] }}{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'audio' %}"
    "<|audio_start|><|audio_pad|><|audio_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen3OmniMoeProcessor that accepts a missing video processor (no torchvision here).
Qwen3OmniProcessor = omni_processor_class(Qwen3OmniMoeProcessor)


class Qwen3OmniFamily(QwenOmniBase):
    family_name = "qwen3_omni_moe"
    model_class_name = "Qwen3OmniMoeForConditionalGeneration"
    display_name = "Qwen3-Omni"
    default_template = QWEN3_OMNI_CHAT_TEMPLATE
    processor_class = Qwen3OmniProcessor

    def prepare_loaded(self) -> None:
        if self.model.has_talker:
            fix_talker_audio_config(self.model)

    def speakers(self) -> dict[str, Any]:
        # generate() looks speakers up lower-cased; list them as the model card names them.
        speaker_ids = self.model.config.talker_config.speaker_id or {}
        return {name.title(): name for name in speaker_ids}

    def talker_layers(self) -> tuple[int, ...]:
        # The talker reads the embeddings (text tokens) and the `accept_hidden_layer` states
        # (image and audio tokens) of every thinker token.
        return (0, int(self.model.config.talker_config.accept_hidden_layer))

    def speech_kwargs(self) -> dict[str, Any]:
        return {"return_audio": True}

    def speech_stream(
        self, speaker: Any, emit: Callable[[np.ndarray], None], halted: Callable[[], bool]
    ) -> Code2WavStream:
        return Code2WavStream(self.model, self._speech_chunk, emit, halted)


def fix_talker_audio_config(model: Any) -> None:
    """transformers 5.23: the talker's 3-D RoPE (`get_rope_index`, shared with the thinker) reads
    `config.audio_config.n_window` from the *talker's* config, which has no `audio_config`, so
    speech fails with AttributeError whenever the conversation holds audio. The thinker's audio
    encoder config is the one it means."""
    talker_config = model.talker.config
    if getattr(talker_config, "audio_config", None) is None:
        talker_config.audio_config = model.config.thinker_config.audio_config
