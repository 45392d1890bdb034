"""Spoken questions for Chromium's fake microphone (`--use-file-for-fake-audio-capture`, which
loops the file): a question, then silence, as a 16-bit mono WAV. Two voices: Piper (the omni
service's own voice) and espeak-ng (a formant synthesizer the recognizer was not tuned on)."""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

from services.omni.audio import resample, to_pcm16, wav_bytes

RATE = 16000


def _write(path: Path, speech: np.ndarray, rate: int, lead_s: float, silence_s: float) -> Path:
    samples = resample(speech.astype(np.float32), rate, RATE)
    quiet = np.zeros(int(RATE * silence_s), dtype=np.float32)
    lead = np.zeros(int(RATE * lead_s), dtype=np.float32)
    path.write_bytes(wav_bytes(to_pcm16(np.concatenate([lead, samples, quiet])), RATE))
    return path


def piper_question(path: Path, text: str, silence_s: float, lead_s: float = 0.5) -> Path:
    """`text` spoken by the bundled Piper voice (no noise: the same samples every run)."""
    from services.omni.tts import PiperTts, TtsOptions

    voice = PiperTts(TtsOptions("auto", noise_scale=0.0, noise_w_scale=0.0))
    speech = np.concatenate(list(voice.synthesize(text)))
    return _write(path, speech, voice.sample_rate, lead_s, silence_s)


def espeak_missing() -> str:
    """Why espeak-ng cannot be used here, or "" when it can."""
    if shutil.which("espeak-ng") is None:
        return "espeak-ng is not installed (Debian: apt-get install -y espeak-ng)"
    return ""


def espeak_question(path: Path, text: str, silence_s: float, lead_s: float = 0.5) -> Path:
    """`text` spoken by espeak-ng's default US English voice."""
    done = subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "150", "--stdout", text],
        capture_output=True,
        timeout=60,
        check=True,
    )
    with wave.open(io.BytesIO(done.stdout)) as reader:
        rate = reader.getframerate()
        assert reader.getsampwidth() == 2
        assert reader.getnchannels() == 1
        frames = reader.readframes(reader.getnframes())
    speech = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    return _write(path, speech, rate, lead_s, silence_s)


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as reader:
        return reader.getnframes() / reader.getframerate()
