"""Session recordings under <data_dir>/recordings/<session_id>/: the user's audio (input.wav,
16 kHz), the model's speech (output.wav), the transcript (transcript.jsonl, one line per user
or model turn) and meta.json. Off unless the operator enables them; a retention limit (count and
age) prunes old ones whenever a new one starts."""

from __future__ import annotations

import json
import logging
import shutil
import time
import wave
from pathlib import Path
from typing import Any

from services.omni.audio import to_pcm16
from services.omni.turns import ASR_RATE, FloatAudio

log = logging.getLogger("mmserve.omni")


def prune_recordings(root: Path, max_count: int, max_age_days: float) -> int:
    """Deletes recordings beyond `max_count` (oldest first) or older than `max_age_days`."""
    if not root.is_dir():
        return 0
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    cutoff = time.time() - max_age_days * 86400
    removed = 0
    for index, folder in enumerate(folders):
        too_many = len(folders) - index > max_count
        if too_many or folder.stat().st_mtime < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


class SessionRecorder:
    """Writes one session's recording as it goes (used on the session's device thread)."""

    def __init__(self, data_dir: Path, session_id: str, output_rate: int, meta: dict[str, Any]):
        self.relative_path = f"recordings/{session_id}"
        self.folder = data_dir / self.relative_path
        self.folder.mkdir(parents=True, exist_ok=True)
        self._meta = {**meta, "session_id": session_id, "started": time.time()}
        self._input = self._open_wav("input.wav", ASR_RATE)
        self._output = self._open_wav("output.wav", output_rate or ASR_RATE)
        self._transcript = (self.folder / "transcript.jsonl").open("a", encoding="utf-8")
        self._closed = False

    def _open_wav(self, name: str, rate: int) -> wave.Wave_write:
        # Kept open for the session's life (closed in close()), so no context manager.
        writer = wave.open(str(self.folder / name), "wb")  # noqa: SIM115
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        return writer

    def add_input(self, samples: FloatAudio) -> None:
        self._input.writeframes(to_pcm16(samples))

    def add_output(self, pcm: bytes) -> None:
        self._output.writeframes(pcm)

    def add_line(self, turn: int, role: str, text: str) -> None:
        entry = {"turn": turn, "role": role, "text": text, "time": time.time()}
        self._transcript.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._transcript.flush()

    def close(self, **extra: Any) -> None:
        if self._closed:
            return
        self._closed = True
        self._input.close()
        self._output.close()
        self._transcript.close()
        meta = {**self._meta, **extra, "ended": time.time()}
        (self.folder / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
