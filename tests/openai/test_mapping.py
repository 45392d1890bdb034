"""The adapter's pure mappings, without servers: request validation, contract field paths to
OpenAI parameters, gRPC statuses to OpenAI errors, media helpers and subtitles."""

from __future__ import annotations

import io
import wave
from types import SimpleNamespace

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from gateway.openai import audio, chat, images, media
from gateway.openai.config import settings_from_args
from gateway.openai.errors import OpenAIError, from_grpc
from gateway.openai.schemas import ChatBody, parse
from mmserve.common.v1 import chat_pb2, media_pb2
from mmserve.omni.v1 import omni_pb2
from mmserve.vl.v1 import vl_pb2


def _rpc_error(code: grpc.StatusCode, message: str, *details: object) -> grpc.aio.AioRpcError:
    status = status_pb2.Status(code=code.value[0], message=message)
    for detail in details:
        status.details.add().Pack(detail)  # type: ignore[arg-type]
    trailers = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, message)


def test_field_violation_names_the_openai_param() -> None:
    violation = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field="sampling.max_new_tokens", description="must be <= 256"
            )
        ]
    )
    error = from_grpc(
        _rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "too many", violation), chat.param_of
    )
    assert (error.status, error.param, error.type) == (
        400,
        "max_completion_tokens",
        "invalid_request_error",
    )


def test_retry_info_becomes_retry_after() -> None:
    info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=1))
    error = from_grpc(_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", info))
    assert error.status == 429
    assert error.headers() == {"retry-after": "3"}
    too_big = from_grpc(_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "message too large"))
    assert too_big.status == 413


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.PERMISSION_DENIED, 403),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.INTERNAL, 500),
        (grpc.StatusCode.FAILED_PRECONDITION, 400),
    ],
)
def test_status_codes(code: grpc.StatusCode, status: int) -> None:
    assert from_grpc(_rpc_error(code, "x")).status == status


def test_leading_field_in_message_becomes_param() -> None:
    error = from_grpc(
        _rpc_error(
            grpc.StatusCode.FAILED_PRECONDITION,
            "messages[0].content[1]: this model does not take images",
        ),
        chat.param_of,
    )
    assert error.param == "messages[0].content[1]"
    assert code_pb2.FAILED_PRECONDITION == 9


def test_contract_paths_map_back() -> None:
    assert chat.param_of("messages[2].content[1].image") == "messages[2].content[1].image_url"
    assert chat.param_of("messages[0].content[0].audio.data") == (
        "messages[0].content[0].input_audio"
    )
    assert chat.param_of("sampling.temperature") == "temperature"
    assert chat.param_of("speech.voice") == "audio.voice"
    assert images.param_of("params.width") == "size"
    assert images.param_of("params.num_images") == "n"


def _body(**extra: object) -> ChatBody:
    body = {"model": "vl", "messages": [{"role": "user", "content": "hi"}], **extra}
    return parse(ChatBody, body)  # type: ignore[no-any-return]


def test_chat_plan_maps_sampling_and_roles() -> None:
    body = parse(
        ChatBody,
        {
            "model": "vl",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is it?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                },
            ],
            "max_tokens": 9,
            "max_completion_tokens": 7,
            "temperature": 0.5,
            "top_p": 0.9,
            "seed": 3,
            "stop": "END",
            "n": 1,
            "presence_penalty": 0,
            "user": "ignored",
        },
    )
    plan = chat.plan(body, "vl")
    message = plan.message
    assert isinstance(message, vl_pb2.ChatRequest)
    assert [m.role for m in message.messages] == [chat_pb2.ROLE_SYSTEM, chat_pb2.ROLE_USER]
    assert message.messages[1].content[1].image.data == b"\x00\x00\x00"
    assert message.messages[1].content[1].image.format == media_pb2.IMAGE_FORMAT_PNG
    sampling = message.sampling
    assert sampling.max_new_tokens == 7  # max_completion_tokens wins
    assert sampling.temperature == pytest.approx(0.5)
    assert list(sampling.stop) == ["END"]
    assert sampling.seed == 3


def test_chat_plan_speech_for_omni() -> None:
    body = _body(modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"})
    plan = chat.plan(body, "omni")
    assert isinstance(plan.message, omni_pb2.ChatRequest)
    assert plan.message.speech.enabled
    assert plan.speech_format == "wav"
    with pytest.raises(OpenAIError) as refused:
        chat.plan(body, "vl")
    assert refused.value.param == "modalities"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 3}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"temperature": 9}, "temperature"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0].image_url.url",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "ftp://x/a.png"}}],
                    }
                ]
            },
            "messages[0].content[0].image_url.url",
        ),
    ],
)
def test_chat_refusals_name_the_param(extra: dict[str, object], param: str) -> None:
    with pytest.raises(OpenAIError) as refused:
        chat.plan(_body(**extra), "vl")
    assert refused.value.status == 400
    assert refused.value.param == param


def test_wav_to_pcm16() -> None:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\x01\x02" * 100)
    assert media.wav_to_pcm16(buffer.getvalue()) == b"\x01\x02" * 100


def test_data_uris() -> None:
    image = media.image_from_url("data:image/jpeg;base64,/9j/", "p")
    assert image.format == media_pb2.IMAGE_FORMAT_JPEG
    assert media.image_from_url("https://example.com/a.png", "p").uri == (
        "https://example.com/a.png"
    )
    with pytest.raises(OpenAIError):
        media.image_from_url("data:image/png;base64,***", "p")
    with pytest.raises(OpenAIError):
        media.image_from_url("data:audio/wav;base64,AAAA", "p")


def test_subtitles() -> None:
    segments = [
        SimpleNamespace(start_seconds=0.0, end_seconds=1.5, text=" Hello"),
        SimpleNamespace(start_seconds=1.5, end_seconds=3661.25, text=" there"),
    ]
    srt = audio.subtitles(segments, "srt")
    assert srt.startswith("1\n00:00:00,000 --> 00:00:01,500\nHello\n")
    assert "01:01:01,250" in srt
    vtt = audio.subtitles(segments, "vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello")


def test_settings_from_flags_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    default = settings_from_args([])
    assert set(default.upstreams) == {"t2i", "vl", "vision", "omni"}
    chosen = settings_from_args(["--upstream", "vl=10.0.0.1:50052;vision=dns:///v:50053"])
    assert chosen.upstreams == {"vl": "10.0.0.1:50052", "vision": "dns:///v:50053"}
    monkeypatch.setenv("MMSERVE_OPENAI_UPSTREAM", "omni=o:1")
    monkeypatch.setenv("MMSERVE_OPENAI_PORT", "9999")
    from_env = settings_from_args([])
    assert from_env.upstreams == {"omni": "o:1"}
    assert from_env.port == 9999
    with pytest.raises(ValueError, match="unknown capability"):
        settings_from_args(["--upstream", "nope=x:1"])
