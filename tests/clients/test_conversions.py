"""The SDK's pure parts, no server needed: media conversion both ways, error details decoding,
the retry decision, CLI output naming and the progress line."""

from __future__ import annotations

import io
import struct
import wave
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from PIL import Image

from mmserve.common.v1 import media_pb2
from mmserve_client import (
    AudioClip,
    InvalidArgument,
    MMServeError,
    ResourceExhausted,
    RetryPolicy,
    Unavailable,
)
from mmserve_client.audio import decode_wav, from_audio_proto, to_audio_proto
from mmserve_client.cli import build_parser
from mmserve_client.commands.service import exit_code
from mmserve_client.commands.t2i import output_paths
from mmserve_client.errors import from_rpc_error
from mmserve_client.images import EncodedImage, from_image_proto, to_image_proto
from mmserve_client.progress import ProgressReporter, bar
from mmserve_client.results import Generation, Usage
from tests.clients.helpers import gradient, png

# --- images ---


def test_images_in_every_form(tmp_path: Path) -> None:
    data = png(20, 10)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    for value in (data, bytearray(data), path, str(path)):
        message = to_image_proto(value)
        assert message.data == data
        assert message.format == media_pb2.IMAGE_FORMAT_PNG
    array = gradient(20, 10)
    for value in (array, array.astype(np.float32) / 255.0, Image.fromarray(array)):
        decoded = Image.open(io.BytesIO(to_image_proto(value).data))
        assert np.array_equal(np.asarray(decoded.convert("RGB")), array)  # lossless
    grey = to_image_proto(np.zeros((4, 6), dtype=np.uint8))
    assert Image.open(io.BytesIO(grey.data)).size == (6, 4)
    jpeg = io.BytesIO()
    Image.fromarray(array).save(jpeg, "JPEG")
    assert to_image_proto(jpeg.getvalue()).format == media_pb2.IMAGE_FORMAT_JPEG
    assert to_image_proto("https://media.example.com/a.png").uri.startswith("https://")
    with pytest.raises(ValueError, match="HxW"):
        to_image_proto(np.zeros((2, 2, 2, 2)))


def test_images_out_keep_their_bytes(tmp_path: Path) -> None:
    data = png(12, 8)
    image = from_image_proto(media_pb2.Image(data=data, format=media_pb2.IMAGE_FORMAT_PNG))
    assert (image.width, image.height, image.format, image.suffix) == (12, 8, "png", ".png")
    assert image.save(tmp_path / "out.png").read_bytes() == data
    assert image.to_pil().size == (12, 8)


# --- audio ---


def wav_file(samples: np.ndarray, rate: int, width: int, channels: int = 1) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def test_wav_of_every_pcm_width_decodes_to_int16() -> None:
    ramp = np.linspace(-0.9, 0.9, 100)
    expected = np.rint(ramp * 32767).astype(np.int16)
    sixteen = decode_wav(wav_file(expected, 16000, 2))
    assert sixteen.sample_rate == 16000
    assert np.array_equal(sixteen.samples, expected)
    eight = decode_wav(wav_file((ramp * 127 + 128).astype(np.uint8), 8000, 1))
    assert np.abs(eight.samples.astype(int) - expected).max() < 2 * 256  # 8-bit steps
    as32 = (ramp * 2**31 * 0.999).astype("<i4")
    assert np.abs(decode_wav(wav_file(as32, 8000, 4)).samples.astype(int) - expected).max() < 40
    packed = b"".join(struct.pack("<i", int(v * 2**23 * 0.999))[:3] for v in ramp)
    as24 = decode_wav(wav_file(np.frombuffer(packed, dtype=np.uint8), 8000, 3))
    assert np.abs(as24.samples.astype(int) - expected).max() < 40
    stereo = decode_wav(wav_file(np.stack([expected, -expected], axis=1), 22050, 2, channels=2))
    assert stereo.samples.shape == (100, 2)
    assert stereo.channels == 2


def test_float_wav_and_round_trips() -> None:
    clip = AudioClip.from_array(np.sin(np.linspace(0, 20, 800)), 16000)
    assert clip.samples.dtype == np.int16
    assert decode_wav(clip.to_wav()).samples.tolist() == clip.samples.tolist()
    floats = clip.samples.astype("<f4") / 32767.0
    header = b"RIFF" + struct.pack("<I", 36 + floats.nbytes) + b"WAVE"
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 3, 1, 16000, 64000, 4, 32)
    float_wav = header + fmt + b"data" + struct.pack("<I", floats.nbytes) + floats.tobytes()
    assert np.abs(decode_wav(float_wav).samples.astype(int) - clip.samples).max() <= 1
    message = to_audio_proto((clip.samples, 16000))
    assert message.format == media_pb2.AUDIO_FORMAT_PCM_S16LE
    assert (message.sample_rate_hz, message.channels) == (16000, 1)
    back = from_audio_proto(message)
    assert back.samples.tolist() == clip.samples.tolist()
    assert back.duration == pytest.approx(0.05)
    assert to_audio_proto(clip.to_wav()).format == media_pb2.AUDIO_FORMAT_WAV
    joined = AudioClip.concatenate([clip, clip])
    assert len(joined.samples) == 1600


# --- errors and retries ---


class FakeRpcError(grpc.RpcError):
    """What grpc raises, as far as the SDK reads it: code, details, trailing metadata."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return self._trailing


def packed(message: object) -> any_pb2.Any:
    result = any_pb2.Any()
    result.Pack(message)  # type: ignore[arg-type]
    return result


def test_rich_status_details_are_decoded() -> None:
    status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT,
        message="bad",
        details=[
            packed(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field="params.width", description="too big"
                        )
                    ]
                )
            ),
            packed(error_details_pb2.RequestInfo(request_id="req-1")),
            packed(error_details_pb2.ErrorInfo(reason="InvalidArgument", domain="mmserve.dev")),
        ],
    )
    trailing = (("grpc-status-details-bin", status.SerializeToString()),)
    error = from_rpc_error(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad", trailing), "job")
    assert isinstance(error, InvalidArgument)
    assert [(v.field, v.description) for v in error.field_violations] == [
        ("params.width", "too big")
    ]
    assert (error.request_id, error.reason, error.job_id) == ("req-1", "InvalidArgument", "job")
    assert error.to_dict()["field_violations"][0]["field"] == "params.width"
    retry = status_pb2.Status(
        code=code_pb2.RESOURCE_EXHAUSTED,
        details=[
            packed(
                error_details_pb2.RetryInfo(
                    retry_delay=duration_pb2.Duration(seconds=1, nanos=500_000_000)
                )
            )
        ],
    )
    full = from_rpc_error(
        FakeRpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "queue full",
            (("grpc-status-details-bin", retry.SerializeToString()),),
        )
    )
    assert isinstance(full, ResourceExhausted)
    assert full.retry_delay == 1.5
    broken = from_rpc_error(
        FakeRpcError(grpc.StatusCode.DATA_LOSS, "", (("grpc-status-details-bin", b"\xff"),))
    )
    assert broken.code is grpc.StatusCode.DATA_LOSS  # a bad trailer never hides the error
    # Envoy resetting a stream whose replica died reads as UNAVAILABLE; the server's own
    # INTERNAL errors (with a request id) stay INTERNAL.
    reset = "Received RST_STREAM with error code 2"
    assert from_rpc_error(FakeRpcError(grpc.StatusCode.INTERNAL, reset, ())).code is (
        grpc.StatusCode.UNAVAILABLE
    )
    own = from_rpc_error(
        FakeRpcError(grpc.StatusCode.INTERNAL, reset, (("x-request-id", "req-2"),))
    )
    assert own.code is grpc.StatusCode.INTERNAL


def test_retry_decision() -> None:
    policy = RetryPolicy(max_attempts=3, max_delay=5)
    full = ResourceExhausted("queue full", retry_delay=0.5)
    assert policy.delay(full, attempt=1, remaining=None) == 0.5
    assert policy.delay(full, attempt=3, remaining=None) is None  # attempts used up
    assert policy.delay(full, attempt=1, remaining=0.4) is None  # would pass the deadline
    assert policy.delay(ResourceExhausted("slow", retry_delay=60), 1, None) == 5  # capped
    assert policy.delay(ResourceExhausted("out of memory"), 1, None) is None  # no RetryInfo
    assert policy.delay(Unavailable("loading"), 1, None) is None  # not in the codes
    loading = RetryPolicy(codes=frozenset({grpc.StatusCode.UNAVAILABLE}), default_delay=0.25)
    assert loading.delay(Unavailable("loading"), 2, None) == 0.5  # back-off without RetryInfo
    assert RetryPolicy.none().delay(full, 1, None) is None
    assert isinstance(full, MMServeError)


# --- CLI pieces ---


def test_exit_codes_follow_grpc_status_numbers() -> None:
    assert exit_code(grpc.StatusCode.OK) == 0
    assert exit_code(grpc.StatusCode.INVALID_ARGUMENT) == 13
    assert exit_code(grpc.StatusCode.RESOURCE_EXHAUSTED) == 18
    assert exit_code(grpc.StatusCode.UNAVAILABLE) == 24
    assert exit_code(grpc.StatusCode.UNAUTHENTICATED) == 26


def test_output_file_names() -> None:
    encoded = [EncodedImage(b"", "png", 8, 8), EncodedImage(b"", "jpeg", 8, 8)]
    result = Generation("job-1", [], encoded, 42, 2, False, Usage())
    assert output_paths("out/fox.png", result) == [Path("out/fox-0.png"), Path("out/fox-1.png")]
    assert output_paths("mmserve-{seed}", result) == [
        Path("mmserve-42.png"),
        Path("mmserve-43.jpg"),
    ]
    single = Generation("job-1", [], encoded[:1], 7, 2, False, Usage())
    assert output_paths("{job}", single) == [Path("job-1.png")]


def test_flags_work_before_and_after_the_command() -> None:
    parser = build_parser()
    before = parser.parse_args(["--json", "--target", "h:1", "info", "vision"])
    after = parser.parse_args(["info", "vision", "--json", "--target", "h:1"])
    neither = parser.parse_args(["info", "vision"])
    assert (before.json, before.target) == (after.json, after.target) == (True, "h:1")
    assert (neither.json, neither.target, neither.retries) == (False, None, 3)


def test_progress_lines_without_a_terminal() -> None:
    stream = io.StringIO()
    progress = ProgressReporter(stream)
    progress.queued(2, 3, 4.0)
    progress.step(5, 10, 1.25, 1.3)
    progress.step(5, 10, 1.25, 1.3)  # unchanged: not repeated
    progress.finish()
    assert stream.getvalue().splitlines() == [
        "queued: position 2 of 3, starts in ~4.0s",
        f"{bar(5, 10)} 5/10 steps  1.2s  ETA 1.3s",
    ]
    assert bar(5, 10, width=4) == "[##..]"
    quiet = io.StringIO()
    ProgressReporter(quiet, enabled=False).step(1, 2, 0, 0)
    assert quiet.getvalue() == ""
