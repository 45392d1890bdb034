"""Speech in for families without native audio input: Whisper through faster-whisper
(CTranslate2). Any LLM then understands spoken questions: the transcript replaces the audio."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.omni.builtin import bundled
from services.omni.turns import ASR_RATE, FloatAudio

log = logging.getLogger("mmserve.omni")


@dataclass(frozen=True)
class AsrOptions:
    model: str  # "auto" (bundled Whisper tiny.en) or a CTranslate2 Whisper folder
    device: str = "cpu"
    compute_type: str = "int8"
    language: str = "en"
    beam_size: int = 1
    threads: int = 2


class WhisperAsr:
    """A loaded faster-whisper model; `transcribe` runs on the device thread."""

    def __init__(self, options: AsrOptions) -> None:
        from faster_whisper import WhisperModel

        folder = bundled.whisper_tiny_en_dir() if options.model == "auto" else Path(options.model)
        if not (folder / "model.bin").is_file():
            raise FileNotFoundError(f"asr_model {folder} is not a CTranslate2 Whisper folder")
        started = time.monotonic()
        self._model = WhisperModel(
            str(folder),
            device=options.device,
            compute_type=options.compute_type,
            cpu_threads=options.threads,
        )
        self._options = options
        self.name = f"whisper:{folder.name if options.model != 'auto' else 'tiny.en'}"
        log.info("ASR %s loaded in %.2fs", self.name, time.monotonic() - started)

    def transcribe(self, samples: FloatAudio) -> str:
        """The words in 16 kHz mono audio ("" for silence)."""
        if len(samples) < ASR_RATE // 10:
            return ""
        segments, _ = self._model.transcribe(
            samples,
            beam_size=self._options.beam_size,
            language=self._options.language or None,
            condition_on_previous_text=False,
            # Without it, audio that is not speech (a tone, hum) makes Whisper hallucinate and
            # retry at every fallback temperature: seconds of device time for nothing. The VAD
            # model ships inside faster-whisper.
            vad_filter=True,
        )
        return " ".join(segment.text.strip() for segment in segments).strip()

    @property
    def languages(self) -> tuple[str, ...]:
        """ISO-639-1 codes the model transcribes (just "en" for English-only models)."""
        return tuple(self._model.supported_languages)

    @property
    def default_language(self) -> str:
        """The configured language hint; "" means detect (English-only models: "en")."""
        if not self._model.model.is_multilingual:
            return "en"
        return self._options.language

    def segments(
        self,
        samples: FloatAudio,
        *,
        language: str,
        prompt: str = "",
        temperature: float = 0.0,
        vad_filter: bool = True,
    ) -> tuple[Any, Iterator[Any]]:
        """faster-whisper's (info, lazy segments) for 16 kHz mono audio. Temperature 0 decodes
        greedily and falls back to hotter sampling only for a suspicious result; above 0, that
        one temperature is used."""
        temperatures: float | tuple[float, ...] = (
            (0.0, 0.2, 0.4, 0.6, 0.8, 1.0) if temperature == 0 else temperature
        )
        segments, info = self._model.transcribe(
            samples,
            beam_size=self._options.beam_size,
            language=language or None,
            initial_prompt=prompt or None,
            temperature=temperatures,
            condition_on_previous_text=False,
            vad_filter=vad_filter,
        )
        return info, segments
