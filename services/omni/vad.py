"""Server-side voice activity detection for live sessions: Silero VAD's ONNX model (shipped in
the silero-vad package) run with onnxruntime directly, plus a small state machine that turns
per-frame speech probabilities into "speech started" and "speech ended" with the utterance.

The package's own wrapper is not used: it needs torch tensors and sets torch's global thread
count on import. This wrapper keeps the model's recurrent state per session (one detector per
session), which is what a streaming detector needs.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.omni.builtin import bundled
from services.omni.turns import ASR_RATE, FloatAudio

FRAME = 512  # samples per Silero frame at 16 kHz (32 ms)
_CONTEXT = 64  # samples of the previous frame Silero expects in front of each frame
FRAME_MS = FRAME * 1000 // ASR_RATE


class SileroModel:
    """The shared ONNX session (stateless; each detector keeps its own recurrent state)."""

    def __init__(self, path: Path | None = None, threads: int = 1) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            str(path or bundled.silero_vad_onnx()),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        self._rate = np.array(ASR_RATE, dtype=np.int64)

    def probability(
        self, frame: FloatAudio, context: FloatAudio, state: np.ndarray[Any, Any]
    ) -> tuple[float, np.ndarray[Any, Any]]:
        window = np.concatenate([context, frame])[None, :].astype(np.float32)
        prob, new_state = self._session.run(
            None, {"input": window, "state": state, "sr": self._rate}
        )
        return float(prob.reshape(-1)[0]), new_state


@dataclass(frozen=True)
class VadConfig:
    threshold: float = 0.5
    min_speech_ms: int = 200
    min_silence_ms: int = 600
    pad_ms: int = 200
    max_utterance_seconds: float = 60.0


class VadEvent(enum.Enum):
    SPEECH_STARTED = "speech started"
    SPEECH_ENDED = "speech ended"
    # The silence after speech reached the pad: the utterance is what SPEECH_ENDED will carry
    # if the silence lasts, so work on it can start early (see `VoiceActivityDetector`).
    SPEECH_PAUSED = "speech paused"
    # Speech came back after SPEECH_PAUSED: that utterance will not end the turn.
    SPEECH_RESUMED = "speech resumed"


@dataclass(frozen=True)
class VadUpdate:
    event: VadEvent
    utterance: FloatAudio | None = None  # the whole utterance, on SPEECH_ENDED and SPEECH_PAUSED


class VoiceActivityDetector:
    """Streaming detector for one session: feed any number of samples, get the events.

    SPEECH_ENDED keeps `pad` of the trailing silence, so once the silence is `pad` long the
    utterance that ends the turn is already known: SPEECH_PAUSED carries it then, about
    `min_silence - pad` before SPEECH_ENDED, and its samples are exactly those SPEECH_ENDED
    will carry unless SPEECH_RESUMED comes in between."""

    def __init__(self, model: SileroModel, config: VadConfig) -> None:
        self._model = model
        self._config = config
        self._neg_threshold = max(0.01, config.threshold - 0.15)  # hysteresis, as Silero's own
        self._start_frames = max(1, config.min_speech_ms // FRAME_MS)
        self._end_frames = max(1, config.min_silence_ms // FRAME_MS)
        self._pad_frames = config.pad_ms // FRAME_MS
        self._max_frames = int(config.max_utterance_seconds * 1000 / FRAME_MS)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self._preroll: deque[FloatAudio] = deque(maxlen=self._pad_frames + self._start_frames)
        self._speech: list[FloatAudio] = []
        self._run = 0  # consecutive speech frames (while silent) or silent frames (in speech)
        self.in_speech = False
        self.last_probability = 0.0

    def feed(self, samples: FloatAudio) -> list[VadUpdate]:
        self._pending = np.concatenate([self._pending, samples.astype(np.float32)])
        updates: list[VadUpdate] = []
        while len(self._pending) >= FRAME:
            frame, self._pending = self._pending[:FRAME], self._pending[FRAME:]
            update = self._frame(frame)
            if update is not None:
                updates.append(update)
        return updates

    def _frame(self, frame: FloatAudio) -> VadUpdate | None:
        prob, self._state = self._model.probability(frame, self._context, self._state)
        self._context = frame[-_CONTEXT:]
        self.last_probability = prob
        if not self.in_speech:
            self._preroll.append(frame)
            self._run = self._run + 1 if prob >= self._config.threshold else 0
            if self._run >= self._start_frames:
                self.in_speech = True
                self._speech = list(self._preroll)
                self._preroll.clear()
                self._run = 0
                return VadUpdate(VadEvent.SPEECH_STARTED)
            return None
        self._speech.append(frame)
        silent = prob < self._neg_threshold
        paused = self._early_end() and self._run >= self._pad_frames
        self._run = self._run + 1 if silent else 0
        if self._run >= self._end_frames or len(self._speech) >= self._max_frames:
            # Keep `pad` of the trailing silence; drop the rest of it.
            keep = len(self._speech) - max(0, self._run - self._pad_frames)
            utterance = np.concatenate(self._speech[:keep])
            self.in_speech = False
            self._speech = []
            self._run = 0
            return VadUpdate(VadEvent.SPEECH_ENDED, utterance)
        if self._early_end() and silent and self._run == self._pad_frames:
            return VadUpdate(VadEvent.SPEECH_PAUSED, np.concatenate(self._speech))
        if paused and not silent:
            return VadUpdate(VadEvent.SPEECH_RESUMED)
        return None

    def _early_end(self) -> bool:
        """Whether SPEECH_PAUSED can come before SPEECH_ENDED (a pad shorter than the
        silence window, and one frame at least)."""
        return 0 < self._pad_frames < self._end_frames

    def take_speech(self) -> FloatAudio | None:
        """Ends a turn early (end_of_turn pushed mid-speech): the speech so far, if any."""
        if not self.in_speech or not self._speech:
            return None
        utterance = np.concatenate(self._speech)
        self.in_speech = False
        self._speech = []
        self._run = 0
        return utterance
