"""Session recordings on disk: what one holds, and the retention limit (count and age)."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import soundfile

from services.omni.recordings import SessionRecorder, prune_recordings


def test_a_recording_holds_both_sides_and_the_transcript(tmp_path):
    recorder = SessionRecorder(tmp_path, "s1", 22050, {"mode": "half_duplex"})
    recorder.add_input(np.full(1600, 0.25, dtype=np.float32))
    recorder.add_output(b"\x01\x00" * 2205)
    recorder.add_line(0, "user", "hello")
    recorder.add_line(0, "assistant", "hi there")
    recorder.close(turns=1)
    folder = tmp_path / recorder.relative_path
    heard, rate = soundfile.read(folder / "input.wav")
    assert rate == 16000
    assert len(heard) == 1600
    spoken, rate = soundfile.read(folder / "output.wav")
    assert rate == 22050
    assert len(spoken) == 2205
    lines = [json.loads(line) for line in (folder / "transcript.jsonl").read_text().splitlines()]
    assert [(line["role"], line["text"]) for line in lines] == [
        ("user", "hello"),
        ("assistant", "hi there"),
    ]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["session_id"] == "s1"
    assert meta["turns"] == 1
    assert meta["mode"] == "half_duplex"


def test_retention_keeps_the_newest_and_drops_the_old(tmp_path):
    root = tmp_path / "recordings"
    now = time.time()
    for index, age_days in enumerate([10, 3, 2, 1, 0]):
        folder = root / f"r{index}"
        folder.mkdir(parents=True)
        stamp = now - age_days * 86400
        os.utime(folder, (stamp, stamp))
    removed = prune_recordings(root, max_count=3, max_age_days=7)
    assert removed == 2
    assert sorted(p.name for p in root.iterdir()) == ["r2", "r3", "r4"]
