"""The Starlette application: routes, error handlers, and the channels' lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.openai import audio, chat, embeddings, images, models
from gateway.openai.config import OpenAISettings
from gateway.openai.errors import OpenAIError
from gateway.openai.state import State
from gateway.openai.upstreams import Upstreams

log = logging.getLogger("gateway.openai")


async def _openai_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OpenAIError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return OpenAIError(exc.status_code, message, type=kind).response()


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return JSONResponse(
        OpenAIError(500, "internal error", type="server_error").body(), status_code=500
    )


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def build_app(settings: OpenAISettings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        upstreams = Upstreams(settings.upstreams, settings.model_refresh_s)
        app.state.mmserve = State(settings, upstreams)
        # Learn the served models early; a capability still loading is asked again later.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(upstreams.models(), 5)
        try:
            yield
        finally:
            await upstreams.close()

    routes = [
        Route("/v1/models", models.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", models.get_model, methods=["GET"]),
        Route("/v1/chat/completions", chat.completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings.create, methods=["POST"]),
        Route("/v1/images/generations", images.generations, methods=["POST"]),
        Route("/v1/images/edits", images.edits, methods=["POST"]),
        Route("/v1/audio/speech", audio.speech, methods=["POST"]),
        Route("/v1/audio/transcriptions", audio.transcriptions, methods=["POST"]),
        Route("/v1/healthz", health, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            OpenAIError: _openai_error,
            HTTPException: _http_error,
            Exception: _server_error,
        },
    )
