"""Reference voices registered from short speech samples, kept under the data dir.

Layout: <data_dir>/voices/registry.json (the list) and <data_dir>/voices/<voice_id>.wav (each
sample as 16 kHz mono 16-bit WAV). Every file is written to a temporary name in the same folder,
flushed to disk and renamed over the old one, and the folder is synced, so a crash mid-write
leaves the old registry or the new one, never a torn file; leftovers of an interrupted write are
removed at start. Methods are blocking and thread-safe: the operations run them in the CPU pool.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from services.omni.audio import to_pcm16, wav_bytes
from services.omni.turns import ASR_RATE, FloatAudio
from services.runtime.errors import NotFound, ResourceExhausted

log = logging.getLogger("mmserve.omni")

REGISTRY_FILE = "registry.json"
VOICE_PREFIX = "voice-"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class RegisteredVoice:
    voice_id: str
    name: str
    sample_seconds: float
    transcript: str
    created: float  # unix time

    @property
    def sample_file(self) -> str:
        return f"{self.voice_id}.wav"


def atomic_write(path: Path, data: bytes) -> None:
    """Replaces `path` with `data` so that readers (and a crash) see the old or the new file."""
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _sync_dir(path.parent)


def _sync_dir(folder: Path) -> None:
    # The rename itself is durable only once the directory entry is on disk.
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class VoiceRegistry:
    def __init__(self, folder: Path, max_voices: int) -> None:
        self.folder = folder
        self._max = max_voices
        self._lock = threading.Lock()
        self._voices: dict[str, RegisteredVoice] = {}

    def load(self) -> None:
        """Reads the registry (creating the folder) and removes leftovers of interrupted writes
        and samples no registry entry names."""
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            for leftover in self.folder.glob(".*.tmp"):
                leftover.unlink(missing_ok=True)
            path = self.folder / REGISTRY_FILE
            entries: list[dict[str, Any]] = []
            if path.is_file():
                data = json.loads(path.read_text(encoding="utf-8"))
                entries = list(data.get("voices", []))
            self._voices = {e["voice_id"]: RegisteredVoice(**e) for e in entries}
            known = {v.sample_file for v in self._voices.values()}
            for sample in self.folder.glob(f"{VOICE_PREFIX}*.wav"):
                if sample.name not in known:
                    sample.unlink(missing_ok=True)
            log.info("voice registry: %d voice(s) in %s", len(self._voices), self.folder)

    def list(self) -> list[RegisteredVoice]:
        with self._lock:
            return sorted(self._voices.values(), key=lambda v: (v.name.lower(), v.voice_id))

    def get(self, voice_id: str) -> RegisteredVoice | None:
        with self._lock:
            return self._voices.get(voice_id)

    def sample(self, voice_id: str) -> FloatAudio:
        voice = self.get(voice_id)
        if voice is None:
            raise NotFound(f"voice {voice_id} is not registered")
        values, _ = soundfile.read(
            str(self.folder / voice.sample_file), dtype="float32", always_2d=True
        )
        return np.asarray(values.mean(axis=1), dtype=np.float32)

    def register(self, name: str, samples: FloatAudio, transcript: str = "") -> RegisteredVoice:
        with self._lock:
            if len(self._voices) >= self._max:
                raise ResourceExhausted(
                    f"{self._max} voices are registered already; delete one first", 0.0
                )
            voice = RegisteredVoice(
                voice_id=f"{VOICE_PREFIX}{uuid.uuid4()}",
                name=name,
                sample_seconds=round(len(samples) / ASR_RATE, 3),
                transcript=transcript,
                created=time.time(),
            )
            # The sample first: a registry entry must never name a missing file.
            atomic_write(self.folder / voice.sample_file, wav_bytes(to_pcm16(samples), ASR_RATE))
            updated = {**self._voices, voice.voice_id: voice}
            try:
                self._write(updated)
            except BaseException:
                (self.folder / voice.sample_file).unlink(missing_ok=True)
                raise
            self._voices = updated
            return voice

    def delete(self, voice_id: str) -> None:
        with self._lock:
            voice = self._voices.get(voice_id)
            if voice is None:
                raise NotFound(f"voice {voice_id} is not registered")
            updated = {k: v for k, v in self._voices.items() if k != voice_id}
            self._write(updated)
            self._voices = updated
            (self.folder / voice.sample_file).unlink(missing_ok=True)

    def _write(self, voices: dict[str, RegisteredVoice]) -> None:
        document = {"version": _FORMAT_VERSION, "voices": [asdict(v) for v in voices.values()]}
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
        atomic_write(self.folder / REGISTRY_FILE, text.encode("utf-8"))
