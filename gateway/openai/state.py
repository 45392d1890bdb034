"""What the handlers share: settings, the upstream channels, and bounded body reading."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import grpc
from starlette.datastructures import FormData
from starlette.requests import Request

from gateway.openai.calls import metadata
from gateway.openai.config import OpenAISettings
from gateway.openai.errors import OpenAIError, from_grpc, invalid
from gateway.openai.upstreams import ServedModel, Upstreams


def too_large(limit: int) -> OpenAIError:
    return OpenAIError(
        413,
        f"request body over the limit of {limit} bytes",
        code="request_too_large",
    )


@dataclass
class State:
    settings: OpenAISettings
    upstreams: Upstreams

    async def models(self, request: Request, refresh: bool = False) -> dict[str, ServedModel]:
        """The models served, as the caller's key sees them."""
        try:
            return await self.upstreams.models(metadata(request), refresh)
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc) from None

    async def resolve(self, request: Request, model: str, allowed: tuple[str, ...]) -> str | None:
        try:
            return await self.upstreams.resolve(model, allowed, metadata(request))
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc) from None

    def _check_length(self, request: Request) -> None:
        declared = request.headers.get("content-length")
        limit = self.settings.max_body_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large(limit)

    async def body(self, request: Request) -> bytes:
        """The body, refused with 413 as soon as it passes the limit."""
        self._check_length(request)
        limit = self.settings.max_body_bytes
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    async def json(self, request: Request) -> Any:
        data = await self.body(request)
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise invalid(f"The body is not valid JSON: {exc}", None) from None

    async def form(self, request: Request) -> FormData:
        """A multipart form (uploads), within the body limit."""
        self._check_length(request)
        if "multipart/form-data" not in request.headers.get("content-type", ""):
            raise invalid("expected a multipart/form-data body", None)
        limit = self.settings.max_body_bytes
        try:
            return await request.form(max_files=16, max_fields=64, max_part_size=limit)
        except Exception as exc:  # python-multipart's and Starlette's parse errors
            raise invalid(f"could not read the multipart body: {exc}", None) from None
