"""MiniCPM-o (openbmb/MiniCPM-o-4_5, -2_6) through trust_remote_code.

UNTESTED HERE: no MiniCPM-o checkpoint can be loaded on these machines (no model hub, no PyPI
package ships one), so this adapter is written against the model's published API
(`AutoModel.from_pretrained(..., init_vision/init_audio/init_tts)`, `model.init_tts()`,
`model.chat(msgs=..., use_tts_template=True, generate_audio=True, output_audio_path=...,
ref_audio=...)`, content lists mixing str, PIL images and 16 kHz float arrays) and has never run.
docs/omni.md says so too. Text comes back in one piece (no token streaming); voice cloning uses
the registered voice's sample as `ref_audio` with the system prompt the model card gives.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.omni.families.base import (
    ConversationState,
    Family,
    FamilyTraits,
    Generated,
    SpeechTarget,
)
from services.omni.generation import GenerationHooks
from services.omni.turns import AudioPart
from services.runtime.chat.messages import FinishReason, ImagePart, Message, TextPart
from services.runtime.chat.sampling import SamplingPlan
from services.runtime.devices import TorchOptions, device_memory_bytes

log = logging.getLogger("mmserve.omni")

SPEECH_SAMPLE_RATE = 24000
CLONE_PROMPT = (
    "Clone the voice in the provided audio prompt.",
    "Please assist users while maintaining this voice style.",
)


class MiniCpmOFamily(Family):
    def __init__(self, folder: Path, options: TorchOptions, *, max_context_tokens: int = 0):
        self._folder = folder
        self._options = options
        self._max_context = max_context_tokens

    def load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        model = AutoModel.from_pretrained(
            str(self._folder),
            trust_remote_code=True,
            attn_implementation=self._options.attention,
            dtype=self._options.dtype,
            init_vision=True,
            init_audio=True,
            init_tts=True,
        )
        self.model = model.to(self._options.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(self._folder), trust_remote_code=True)
        self.model.init_tts()
        config = self.model.config
        context = int(getattr(config, "max_position_embeddings", 0) or 0)
        if self._max_context:
            context = min(context, self._max_context) if context else self._max_context
        self.traits = FamilyTraits(
            family=str(getattr(config, "model_type", "minicpmo")),
            architecture=type(self.model).__name__,
            audio_input=True,
            image_input=True,
            speech_output=True,
            speech_sample_rate=SPEECH_SAMPLE_RATE,
            speakers=("default",),
            voice_cloning=True,
            max_context_tokens=context,
        )

    def generate(
        self,
        messages: tuple[Message, ...],
        sampling: SamplingPlan,
        hooks: GenerationHooks,
        *,
        speech: SpeechTarget | None = None,
        state: ConversationState | None = None,
    ) -> Generated:
        msgs: list[dict[str, Any]] = []
        if speech is not None and speech.reference is not None:
            msgs.append(
                {"role": "system", "content": [CLONE_PROMPT[0], speech.reference, CLONE_PROMPT[1]]}
            )
        for message in messages:
            content: list[Any] = []
            for part in message.content:
                if isinstance(part, TextPart):
                    content.append(part.text)
                elif isinstance(part, ImagePart):
                    content.append(part.image)
                elif isinstance(part, AudioPart):
                    content.append(part.samples)
            msgs.append({"role": message.role.value, "content": content})
        hooks.should_stop()  # cancelled before starting: raise now
        with tempfile.TemporaryDirectory() as folder:
            wav_path = Path(folder) / "reply.wav"
            with torch.inference_mode():
                text = self.model.chat(
                    msgs=msgs,
                    tokenizer=self.tokenizer,
                    do_sample=not sampling.greedy,
                    temperature=sampling.temperature or None,
                    max_new_tokens=sampling.max_new_tokens,
                    use_tts_template=speech is not None,
                    generate_audio=speech is not None,
                    output_audio_path=str(wav_path) if speech is not None else None,
                )
            waveform = _read_wav(wav_path) if speech is not None and wav_path.is_file() else None
        text = text if isinstance(text, str) else str(getattr(text, "text", text))
        for stop in sampling.stop:
            if stop in text:
                text = text[: text.index(stop)]
        output_tokens = len(self.tokenizer(text)["input_ids"])
        hooks.on_text(text, output_tokens)
        finish = (
            FinishReason.LENGTH if output_tokens >= sampling.max_new_tokens else FinishReason.STOP
        )
        return Generated(text, finish, 0, output_tokens, waveform)

    def memory_bytes(self) -> int | None:
        return device_memory_bytes(self._options.device)


def _read_wav(path: Path) -> np.ndarray[Any, Any]:
    import soundfile

    values, _ = soundfile.read(str(path), dtype="float32", always_2d=True)
    return values.mean(axis=1)
