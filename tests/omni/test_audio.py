"""Audio decoding, resampling and chunking, without a server."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from services.omni.audio import AudioLimits, PcmChunker, decode_audio, resample, to_pcm16
from services.runtime.errors import InvalidArgument

LIMITS = AudioLimits(max_seconds=10, max_bytes=4 * 1024 * 1024)


def tone(rate: int, seconds: float = 1.0, hz: float = 440.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def encoded(samples: np.ndarray, rate: int, fmt: str, subtype: str, channels: int = 1) -> bytes:
    buffer = io.BytesIO()
    data = np.stack([samples] * channels, axis=1) if channels > 1 else samples
    soundfile.write(buffer, data, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fmt", "subtype", "declared"),
    [
        ("WAV", "PCM_16", "WAV"),
        ("WAV", "FLOAT", None),
        ("WAV", "PCM_24", None),
        ("FLAC", "PCM_16", "FLAC"),
    ],
)
def test_containers_decode_to_16k_mono(fmt, subtype, declared):
    data = encoded(tone(44100), 44100, fmt, subtype, channels=2)
    samples = decode_audio(data, declared, field="a", limits=LIMITS)
    assert samples.dtype == np.float32
    assert len(samples) == 16000
    expected = tone(16000)
    assert np.abs(samples[200:-200] - expected[200:-200]).max() < 0.01


def test_raw_pcm_is_taken_at_its_stated_rate_and_channels():
    stereo = np.stack([tone(8000), tone(8000)], axis=1)
    pcm = to_pcm16(stereo.reshape(-1))
    samples = decode_audio(pcm, "PCM_S16LE", field="a", limits=LIMITS, sample_rate=8000, channels=2)
    assert len(samples) == 16000
    assert np.abs(samples[200:-200] - tone(16000)[200:-200]).max() < 0.01


def test_resampling_removes_what_the_new_rate_cannot_hold():
    high = tone(22050, hz=9000)  # above 16 kHz's Nyquist limit
    assert np.sqrt(np.mean(resample(high, 22050, 16000)[500:-500] ** 2)) < 0.01
    kept = resample(tone(22050, hz=3000), 22050, 16000)
    assert np.sqrt(np.mean(kept[500:-500] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


@pytest.mark.parametrize(
    ("data", "fmt", "kwargs", "field"),
    [
        (b"", None, {}, "a.data"),
        (b"\x00" * 100, None, {}, "a.data"),
        (b"\x00\x00" * 10, "PCM_S16LE", {}, "a.sample_rate_hz"),
        (b"\x00\x00" * 10, "PCM_S16LE", {"sample_rate": 16000, "channels": 3}, "a.channels"),
        (b"\x00\x00" * 10, "PCM_S16LE", {"sample_rate": 1000}, "a.sample_rate_hz"),
        (b"\x00\x00" * 16000 * 11, "PCM_S16LE", {"sample_rate": 16000}, "a"),
        (b"RIFF\x00\x00\x00\x00WAVE", "WAV", {}, "a.data"),
        (encoded(tone(16000), 16000, "WAV", "PCM_16"), "FLAC", {}, "a.format"),
        (b"\x00" * (5 * 1024 * 1024), None, {}, "a.data"),
    ],
    ids=[
        "empty",
        "unknown",
        "no-rate",
        "channels",
        "low-rate",
        "too-long",
        "torn-wav",
        "mismatch",
        "too-big",
    ],
)
def test_bad_audio_names_the_field(data, fmt, kwargs, field):
    with pytest.raises(InvalidArgument) as caught:
        decode_audio(data, fmt, field="a", limits=LIMITS, **kwargs)
    assert [v.field for v in caught.value.violations] == [field]


def test_header_duration_is_checked_before_decoding():
    # A small FLAC of 12 s of silence compresses to a few KB, under the byte limit.
    data = encoded(np.zeros(16000 * 12, np.float32), 16000, "FLAC", "PCM_16")
    assert len(data) < LIMITS.max_bytes
    with pytest.raises(InvalidArgument, match="limit is 10 s"):
        decode_audio(data, None, field="a", limits=LIMITS)


def test_chunker_cuts_exact_sizes_whatever_comes_in():
    chunker = PcmChunker(22050, 100)
    chunks = []
    for size in (1000, 7000, 30, 5000):
        chunks += chunker.push(b"\x01\x00" * size)
    chunks += chunker.flush()
    assert [i for i, _ in chunks] == list(range(len(chunks)))
    assert all(len(c) == 4410 for _, c in chunks[:-1])
    assert 0 < len(chunks[-1][1]) <= 4410
    assert sum(len(c) for _, c in chunks) == 2 * 13030
