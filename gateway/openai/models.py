"""GET /v1/models and /v1/models/{id}: one entry per served model, with its capability."""

from __future__ import annotations

from typing import Any

from openai.types import Model
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.openai.errors import OpenAIError
from gateway.openai.state import State
from gateway.openai.upstreams import ENDPOINTS, ServedModel


def _entry(served: ServedModel) -> dict[str, Any]:
    # Extra fields beside OpenAI's four: the openai package keeps them (model.capability).
    model = Model(
        id=served.id,
        object="model",
        created=served.created,
        owned_by="mmserve",
        capability=served.capability,
        family=served.family,
        state=served.state,
        endpoints=list(ENDPOINTS[served.capability]),
        aliases=[served.capability],
        # What the model can do (ModelInfo.capabilities), e.g. "image_input", "speech_output".
        features=list(served.info.model_info.capabilities),
    )
    return model.model_dump()


async def list_models(request: Request) -> JSONResponse:
    state: State = request.app.state.mmserve
    served = await state.models(request)
    return JSONResponse({"object": "list", "data": [_entry(m) for m in served.values()]})


async def get_model(request: Request) -> JSONResponse:
    state: State = request.app.state.mmserve
    wanted = request.path_params["model"]
    for refresh in (False, True):
        for served in (await state.models(request, refresh)).values():
            if wanted in (served.id, served.capability):
                return JSONResponse(_entry(served))
    raise OpenAIError(
        404, f"The model '{wanted}' does not exist", param="model", code="model_not_found"
    )
