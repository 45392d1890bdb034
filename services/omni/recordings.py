"""Session recordings under <data_dir>/recordings/<session_id>/: the user's audio (input.wav,
16 kHz), the model's speech (output.wav), the transcript (transcript.jsonl, one line per user
or model turn) and meta.json (mode, owner key id, times, turns). Off unless the operator enables
them; a retention limit (count and age) prunes old ones whenever a new one starts. Each key
lists and reads back only the recordings of its own sessions."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.omni.audio import to_pcm16
from services.omni.turns import ASR_RATE, FloatAudio
from services.runtime.errors import NotFound

log = logging.getLogger("mmserve.omni")

META_FILE = "meta.json"


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
    """Writes one session's recording as it goes: the user's audio from the listener (CPU
    pool), the model's speech and the transcript from the turn jobs (device thread). A lock
    orders them; whatever comes after `close` is dropped."""

    def __init__(self, data_dir: Path, session_id: str, output_rate: int, meta: dict[str, Any]):
        self.relative_path = f"recordings/{session_id}"
        self.folder = data_dir / self.relative_path
        self.folder.mkdir(parents=True, exist_ok=True)
        self._meta = {**meta, "session_id": session_id, "started": time.time()}
        self._lock = threading.Lock()
        self._input = self._open_wav("input.wav", ASR_RATE)
        self._output = self._open_wav("output.wav", output_rate or ASR_RATE)
        self._transcript = (self.folder / "transcript.jsonl").open("a", encoding="utf-8")
        self._closed = False
        # Written now too, so a recording in progress is listed (with its owner and mode).
        self._write_meta(self._meta)

    def _open_wav(self, name: str, rate: int) -> wave.Wave_write:
        # Kept open for the session's life (closed in close()), so no context manager.
        writer = wave.open(str(self.folder / name), "wb")  # noqa: SIM115
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        return writer

    def _write_meta(self, meta: dict[str, Any]) -> None:
        path = self.folder / META_FILE
        temp = path.with_name(f".{META_FILE}.tmp")
        temp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
        temp.replace(path)

    def add_input(self, samples: FloatAudio) -> None:
        with self._lock:
            if not self._closed:
                self._input.writeframes(to_pcm16(samples))

    def add_output(self, pcm: bytes) -> None:
        with self._lock:
            if not self._closed:
                self._output.writeframes(pcm)

    def add_line(self, turn: int, role: str, text: str) -> None:
        entry = {"turn": turn, "role": role, "text": text, "time": time.time()}
        with self._lock:
            if not self._closed:
                self._transcript.write(json.dumps(entry, ensure_ascii=False) + "\n")
                self._transcript.flush()

    def close(self, **extra: Any) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._input.close()
            self._output.close()
            self._transcript.close()
            self._write_meta({**self._meta, **extra, "ended": time.time()})


# ---- reading recordings back (ListRecordings, GetRecording) -----------------------------------

FILES = {
    "input": ("input.wav", "audio/wav"),
    "output": ("output.wav", "audio/wav"),
    "transcript": ("transcript.jsonl", "application/x-ndjson"),
    "meta": (META_FILE, "application/json"),
}


@dataclass(frozen=True)
class RecordingInfo:
    session_id: str
    mode: str
    started: float
    ended: float  # 0 while recording
    turns: int
    input_seconds: float
    output_seconds: float
    size_bytes: int
    path: str


def _wav_seconds(path: Path) -> float:
    try:
        with wave.open(str(path), "rb") as reader:
            rate = reader.getframerate()
            return reader.getnframes() / rate if rate else 0.0
    except (OSError, EOFError, wave.Error):
        return 0.0


def _meta(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def list_recordings(root: Path, owner: str) -> list[RecordingInfo]:
    """The recordings `owner` made ("" with auth off), newest first."""
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        meta = _meta(folder) if folder.is_dir() else None
        if meta is None or str(meta.get("owner", "")) != owner:
            continue
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        found.append(
            RecordingInfo(
                session_id=folder.name,
                mode=str(meta.get("mode", "")),
                started=float(meta.get("started", 0.0)),
                ended=float(meta.get("ended", 0.0)),
                turns=int(meta.get("turns", 0)),
                input_seconds=_wav_seconds(folder / "input.wav"),
                output_seconds=_wav_seconds(folder / "output.wav"),
                size_bytes=size,
                path=f"{root.name}/{folder.name}",
            )
        )
    return sorted(found, key=lambda r: r.started, reverse=True)


def read_recording(
    root: Path, session_id: str, owner: str, file: str, offset: int, max_bytes: int
) -> tuple[bytes, int, str]:
    """(bytes from `offset`, the file's size, its media type); NotFound for an unknown id, a
    deleted recording or another owner's."""
    folder = root / session_id
    meta = _meta(folder) if folder.is_dir() else None
    if meta is None or str(meta.get("owner", "")) != owner:
        raise NotFound(f"no recording of session {session_id}")
    name, media_type = FILES[file]
    path = folder / name
    try:
        with path.open("rb") as handle:
            total = os.fstat(handle.fileno()).st_size
            handle.seek(min(offset, total))
            data = handle.read(max_bytes)
    except FileNotFoundError as exc:
        raise NotFound(f"recording {session_id} has no {file} file") from exc
    return data, total, media_type
