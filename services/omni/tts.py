"""Speech out for families without native speech: a Piper ONNX voice (VITS), one sentence at a
time so the first audio leaves before the whole reply is spoken."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from services.omni.builtin import bundled
from services.omni.turns import FloatAudio

_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
log = logging.getLogger("mmserve.omni")


@dataclass(frozen=True)
class TtsOptions:
    model: str  # "auto" (bundled Piper joe voice) or a Piper .onnx path
    threads: int = 1
    noise_scale: float | None = None
    noise_w_scale: float | None = None
    length_scale: float | None = None


class PiperTts:
    """A loaded Piper voice. Piper cannot clone voices: registered voices are refused."""

    supports_cloning = False
    supports_speed = True  # through length_scale

    def __init__(self, options: TtsOptions) -> None:
        import onnxruntime
        from piper import PiperVoice, SynthesisConfig
        from piper.config import PiperConfig

        if options.model == "auto":
            model_path, config_path = bundled.piper_joe_voice()
        else:
            model_path = Path(options.model)
            config_path = Path(f"{options.model}.json")
        if not model_path.is_file() or not config_path.is_file():
            raise FileNotFoundError(f"tts_model {model_path} needs the .onnx and its .onnx.json")
        started = time.monotonic()
        config = json.loads(config_path.read_text(encoding="utf-8"))
        # Built by hand rather than PiperVoice.load so the thread count is ours: the device
        # thread shares the CPU with the ASR and the LLM.
        session_options = onnxruntime.SessionOptions()
        session_options.intra_op_num_threads = options.threads
        session_options.inter_op_num_threads = 1
        self._voice = PiperVoice(
            config=PiperConfig.from_dict(config),
            session=onnxruntime.InferenceSession(
                str(model_path), sess_options=session_options, providers=["CPUExecutionProvider"]
            ),
        )
        self._synthesis = SynthesisConfig(
            noise_scale=options.noise_scale,
            noise_w_scale=options.noise_w_scale,
            length_scale=options.length_scale,
        )
        self._synthesis_cls = SynthesisConfig
        self._length_scale = float(options.length_scale or self._voice.config.length_scale or 1.0)
        self.sample_rate = int(self._voice.config.sample_rate)
        speaker_map: dict[str, int] = dict(config.get("speaker_id_map") or {})
        # A single-speaker voice has no speaker map: its one speaker is named after the dataset.
        self._speakers = speaker_map or {str(config.get("dataset") or model_path.stem): -1}
        self.name = f"piper:{model_path.stem}"
        log.info("TTS %s loaded in %.2fs", self.name, time.monotonic() - started)

    @property
    def speakers(self) -> tuple[str, ...]:
        return tuple(self._speakers)

    def synthesize(self, text: str, speaker: str = "", speed: float = 1.0) -> Iterator[FloatAudio]:
        """Float32 audio at `sample_rate`, one array per sentence Piper finds in `text`;
        `speed` > 1 speaks faster (Piper's length_scale divided by it)."""
        # Piper's espeak bridge raises on NUL and control characters; as speech they are
        # silence anyway (a text of nothing else is refused for making no sound).
        text = _CONTROL_CHARACTERS.sub(" ", text)
        speaker_id = self._speakers.get(speaker, -1) if speaker else -1
        config = self._synthesis
        if speaker_id >= 0 or speed != 1.0:
            config = self._synthesis_cls(
                speaker_id=speaker_id if speaker_id >= 0 else None,
                noise_scale=config.noise_scale,
                noise_w_scale=config.noise_w_scale,
                length_scale=self._length_scale / speed,
            )
        for chunk in self._voice.synthesize(text, config):
            yield chunk.audio_float_array
