"""Shared fixtures for the protobuf contract tests (tests/contracts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.message import Message

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "protos"


def proto_files() -> list[str]:
    """Every mmserve .proto file, relative to protos/ (the import path), sorted."""
    return sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))


@pytest.fixture(scope="session")
def descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorSet:
    """protos/ compiled by grpc_tools.protoc with source info (comments), without imports."""
    out = tmp_path_factory.mktemp("protoc") / "mmserve.binpb"
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "--include_source_info",
        f"--descriptor_set_out={out}",
        f"-I{PROTO_ROOT}",
        *proto_files(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.returncode == 0, f"protoc failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
    # protoc reports unused imports and similar problems as warnings on stderr: keep them out.
    assert not proc.stderr.strip(), f"protoc warnings:\n{proc.stderr}"
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(out.read_bytes())
    return fds


def cross_language_messages() -> dict[str, Message]:
    """What tests/contracts/ts/encode.ts and go/src/mmservecheck print, built in Python.

    Keep the three in sync: each side builds the same values by hand, so a decode mismatch
    means the stubs disagree on the wire or JSON format.
    """
    from mmserve.common.v1 import chat_pb2, media_pb2
    from mmserve.omni.v1 import omni_pb2
    from mmserve.t2i.v1 import t2i_pb2

    t2i = t2i_pb2.TextToImageRequest(
        params=t2i_pb2.GenerationParams(
            prompt="a red fox in the snow, 雪",
            negative_prompt="blurry",
            width=768,
            height=512,
            num_inference_steps=0,  # optional set to zero: presence must survive
            guidance_scale=4.5,
            seed=2**64 - 1,
            num_images=2,
            output_format=media_pb2.IMAGE_FORMAT_WEBP,
            output_quality=85,
        ),
        preview=t2i_pb2.PreviewOptions(every_n_steps=5, max_side=128),
    )
    omni = omni_pb2.ChatRequest(
        messages=[
            omni_pb2.ChatMessage(
                role=chat_pb2.ROLE_SYSTEM, content=[omni_pb2.ContentPart(text="Be brief.")]
            ),
            omni_pb2.ChatMessage(
                role=chat_pb2.ROLE_USER,
                content=[
                    omni_pb2.ContentPart(
                        audio=media_pb2.Audio(
                            data=bytes([0, 1, 254, 255]),
                            format=media_pb2.AUDIO_FORMAT_PCM_S16LE,
                            sample_rate_hz=16000,
                            channels=1,
                        )
                    ),
                    omni_pb2.ContentPart(image=media_pb2.Image(data=b"\x89PNG")),
                ],
            ),
        ],
        sampling=chat_pb2.SamplingParams(
            max_new_tokens=32, temperature=0.0, seed=7, stop=["</s>", "\n\n"]
        ),
        speech=omni_pb2.SpeechOptions(enabled=True, voice="voice-1", chunk_ms=200),
    )
    return {m.DESCRIPTOR.full_name: m for m in (t2i, omni)}


def check_cross_language_output(stdout: str, producer: str) -> None:
    """Decode the JSON lines a TS or Go program printed and compare with the Python messages."""
    from google.protobuf import json_format

    expected = cross_language_messages()
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert [line["type"] for line in lines] == list(expected), f"{producer} printed:\n{stdout}"
    for line in lines:
        want = expected[line["type"]]
        cls = type(want)
        from_binary = cls.FromString(bytes.fromhex(line["binary"]))
        assert from_binary == want, (
            f"{producer} binary {line['type']} decodes in Python as\n{from_binary}\n"
            f"expected\n{want}"
        )
        from_json = json_format.Parse(line["json"], cls())
        assert from_json == want, (
            f"{producer} JSON {line['json']} parses in Python as\n{from_json}\nexpected\n{want}"
        )
        # Explicit presence of an optional set to zero, and 64-bit range, across languages.
        if line["type"] == "mmserve.t2i.v1.TextToImageRequest":
            for msg in (from_binary, from_json):
                assert msg.params.HasField("num_inference_steps"), f"{producer}: presence lost"
                assert msg.params.seed == 2**64 - 1
                assert msg.params.prompt.endswith("雪")


@pytest.fixture
def cross_language_check():
    """check_cross_language_output, for tests (conftest helpers are not imported directly)."""
    return check_cross_language_output
