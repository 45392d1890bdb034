"""Request bodies, validated with pydantic. The content parts and the audio options are the
`openai` package's own request TypedDicts (what the SDK sends); the top-level bodies are models
of the fields this service maps, because the package's top-level params are TypedDicts of
lazily-validated iterables whose union errors do not name the parameter. Unknown fields are
ignored (clients such as LangChain send extras); fields we cannot honour are refused in
`unsupported` with the parameter named."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from openai.types.chat.chat_completion_audio_param import ChatCompletionAudioParam
from openai.types.chat.chat_completion_content_part_image_param import (
    ChatCompletionContentPartImageParam,
)
from openai.types.chat.chat_completion_content_part_input_audio_param import (
    ChatCompletionContentPartInputAudioParam,
)
from openai.types.chat.chat_completion_content_part_text_param import (
    ChatCompletionContentPartTextParam,
)
from openai.types.chat.chat_completion_stream_options_param import (
    ChatCompletionStreamOptionsParam,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.openai.errors import OpenAIError, invalid

ContentPart = Annotated[
    ChatCompletionContentPartTextParam
    | ChatCompletionContentPartImageParam
    | ChatCompletionContentPartInputAudioParam,
    Field(discriminator="type"),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[Any] | None = None


class ChatBody(_Body):
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool | None = False
    stream_options: ChatCompletionStreamOptionsParam | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, lt=2**64)
    stop: str | list[str] | None = None
    n: int | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    audio: ChatCompletionAudioParam | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    logit_bias: dict[str, Any] | None = None
    # Extensions (as vLLM names them): passed to SamplingParams.
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)


class EmbeddingsBody(_Body):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class ImageGenerationBody(_Body):
    model: str | None = None
    prompt: str
    n: int | None = Field(None, ge=1)
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(None, ge=0, le=100)
    stream: bool | None = False
    partial_images: int | None = Field(None, ge=0, le=3)
    quality: str | None = None
    background: str | None = None
    style: str | None = None
    # Extensions: passed to GenerationParams.
    seed: int | None = Field(None, ge=0, lt=2**64)
    negative_prompt: str | None = None
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0)


_SKIP = re.compile(r"[^A-Za-z0-9_]")  # pydantic's union-branch tags such as "list[...]"


def param_of(loc: tuple[int | str, ...]) -> str:
    """messages[0].content[1].image_url.url from pydantic's location tuple."""
    text = ""
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _SKIP.search(part) or part in {"str", "list", "int", "float", "dict", "bool"}:
            continue
        elif part == previous:
            continue  # a tagged union's tag ("image_url") before the field of the same name
        else:
            text += f".{part}" if text else part
        previous = part
    return text


def parse(model: type[_Body], body: Any) -> Any:
    """The validated body, or a 400 naming the deepest offending parameter."""
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", None)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        worst = max(errors, key=lambda e: len(e["loc"]))
        param = param_of(tuple(worst["loc"]))
        raise invalid(f"{param or 'body'}: {worst['msg']}", param or None) from None


def unsupported(param: str, what: str) -> OpenAIError:
    return invalid(f"{param}: {what}", param, code="unsupported_parameter")
