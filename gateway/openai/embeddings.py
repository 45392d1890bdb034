"""POST /v1/embeddings -> vision EmbedTexts (strings) and EmbedImages (data-URI images, an
extension), merged back in input order."""

from __future__ import annotations

import asyncio
import re
import struct
from typing import Any

from openai.types import CreateEmbeddingResponse, Embedding
from openai.types.create_embedding_response import Usage
from starlette.requests import Request
from starlette.responses import Response

from gateway.openai import calls, media
from gateway.openai.errors import unknown_model
from gateway.openai.schemas import EmbeddingsBody, parse, unsupported
from gateway.openai.state import State
from mmserve.vision.v1 import vision_pb2

ENDPOINT = "/v1/embeddings"
_IMAGE_URI = re.compile(r"^data:image/", re.IGNORECASE)


def _inputs(body: EmbeddingsBody) -> list[str]:
    value = body.input
    if isinstance(value, str):
        return [value]
    if any(not isinstance(item, str) for item in value):
        raise unsupported("input", "token arrays are not accepted; send strings")
    if not value:
        raise unsupported("input", "at least one input is needed")
    return list(value)  # type: ignore[arg-type]


def _param_mapper(positions: list[int]) -> Any:
    """Maps `texts[i]` / `images[i]` of a sub-request back to `input[j]`."""

    def param_of(field: str) -> str:
        found = re.match(r"^(texts|images)\[(\d+)\](.*)$", field)
        if found and int(found.group(2)) < len(positions):
            return f"input[{positions[int(found.group(2))]}]"
        return "input"

    return param_of


def _embedding(index: int, values: Any, encoding: str) -> Embedding:
    if encoding == "base64":
        # Not validated: the model says list of floats. (Floats go through validation: a
        # constructed float list serializes element by element in Python, 30x slower.)
        packed = media.b64(struct.pack(f"<{len(values)}f", *values))
        return Embedding.model_construct(object="embedding", index=index, embedding=packed)
    return Embedding(object="embedding", index=index, embedding=list(values))


async def create(request: Request) -> Response:
    state: State = request.app.state.mmserve
    body: EmbeddingsBody = parse(EmbeddingsBody, await state.json(request))
    if await state.resolve(request, body.model, ("vision",)) is None:
        raise unknown_model(body.model, ENDPOINT)
    if body.dimensions is not None:
        raise unsupported("dimensions", "the model's own dimension is always returned")
    inputs = _inputs(body)
    texts = [i for i, text in enumerate(inputs) if not _IMAGE_URI.match(text)]
    images = [i for i, text in enumerate(inputs) if _IMAGE_URI.match(text)]
    stub = state.upstreams.stub("vision")
    meta = calls.metadata(request)
    deadline = calls.timeout(request, state.settings.request_timeout_s)
    pending = []
    if texts:
        message = vision_pb2.EmbedTextsRequest(texts=[inputs[i] for i in texts])
        call = stub.EmbedTexts(message, metadata=meta, timeout=deadline)
        pending.append(calls.unary(request, call, _param_mapper(texts)))
    if images:
        pictures = [media.image_from_url(inputs[i], f"input[{i}]") for i in images]
        message = vision_pb2.EmbedImagesRequest(images=pictures)
        call = stub.EmbedImages(message, metadata=meta, timeout=deadline)
        pending.append(calls.unary(request, call, _param_mapper(images)))
    replies = await asyncio.gather(*pending)
    vectors: list[Any] = [None] * len(inputs)
    tokens = 0
    for positions, reply in zip([p for p in (texts, images) if p], replies, strict=True):
        tokens += reply.usage.input_tokens
        for position, embedding in zip(positions, reply.embeddings, strict=True):
            vectors[position] = embedding.values
    result = CreateEmbeddingResponse(
        object="list",
        model=body.model,
        data=[_embedding(i, v, body.encoding_format) for i, v in enumerate(vectors)],
        usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
    )
    return Response(result.model_dump_json(warnings=False), media_type="application/json")
