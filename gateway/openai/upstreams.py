"""One grpc.aio channel per capability, made once and reused by every request, and the
catalog of served models (GetModelInfo of each capability, cached)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import grpc

from gateway.catalog import capability
from mmserve.common.v1 import model_pb2
from mmserve.omni.v1 import omni_pb2, omni_pb2_grpc
from mmserve.t2i.v1 import t2i_pb2, t2i_pb2_grpc
from mmserve.vision.v1 import vision_pb2, vision_pb2_grpc
from mmserve.vl.v1 import vl_pb2, vl_pb2_grpc

# What chat, embeddings, images and audio need from a capability.
_STUBS: dict[str, Any] = {
    "t2i": t2i_pb2_grpc.ImageGenerationServiceStub,
    "vl": vl_pb2_grpc.VisionLanguageServiceStub,
    "vision": vision_pb2_grpc.VisionServiceStub,
    "omni": omni_pb2_grpc.OmniServiceStub,
}
_INFO_REQUESTS: dict[str, Any] = {
    "t2i": t2i_pb2.GetModelInfoRequest,
    "vl": vl_pb2.GetModelInfoRequest,
    "vision": vision_pb2.GetModelInfoRequest,
    "omni": omni_pb2.GetModelInfoRequest,
}
# The OpenAI endpoints each capability answers (GET /v1/models says so).
ENDPOINTS: dict[str, tuple[str, ...]] = {
    "t2i": ("/v1/images/generations", "/v1/images/edits"),
    "vl": ("/v1/chat/completions",),
    "vision": ("/v1/embeddings",),
    "omni": ("/v1/chat/completions", "/v1/audio/speech", "/v1/audio/transcriptions"),
}
MESSAGE_LIMIT = 100 * 1024 * 1024  # above the services' own limit: they decide
MAX_CACHED_KEYS = 1000
Metadata = tuple[tuple[str, str], ...]


def service_config(health_service: str) -> str:
    """Round-robin over every address of the target, skipping replicas whose grpc.health.v1
    status is not SERVING (loading or draining), and retrying UNAVAILABLE before any response
    header (a service sends one as soon as it accepts a job, so no job runs twice)."""
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "healthCheckConfig": {"serviceName": health_service},
            "methodConfig": [
                {
                    "name": [{}],
                    "retryPolicy": {
                        "maxAttempts": 3,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "0.5s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
        }
    )


def open_channel(name: str, target: str) -> grpc.aio.Channel:
    spec = capability(name)
    options = [
        ("grpc.service_config", service_config(spec.service)),
        ("grpc.enable_retries", 1),
        ("grpc.max_send_message_length", MESSAGE_LIMIT),
        ("grpc.max_receive_message_length", MESSAGE_LIMIT),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]
    return grpc.aio.insecure_channel(target, options=options)


def model_name(model_id: str) -> str:
    """The id clients send: ModelInfo.model_id without a trailing note such as
    " (built-in, random weights)"."""
    return re.sub(r"\s+\(.*\)$", "", model_id.strip())


@dataclass(frozen=True)
class ServedModel:
    """One model a capability serves, as GET /v1/models lists it."""

    id: str  # ModelInfo.model_id
    capability: str
    family: str
    state: str
    created: int
    info: Any  # the capability's GetModelInfoResponse


# How soon an incomplete answer (a capability that did not answer), or a forced refresh, is
# fetched again: often enough to see a service come up, rarely enough that a flood of bad
# model names cannot become a flood of GetModelInfo calls.
_RETRY_S = 1.0


class Upstreams:
    """The channels and stubs, and which model is served where."""

    def __init__(self, targets: dict[str, str], refresh_s: float = 30.0) -> None:
        self.targets = dict(targets)
        self.channels = {n: open_channel(n, t) for n, t in self.targets.items()}
        self.stubs = {n: _STUBS[n](c) for n, c in self.channels.items()}
        self.refresh_s = refresh_s
        # Per caller key: the services check keys on GetModelInfo too, so each key sees what
        # the services answer it (a bad key gets 401 here as everywhere).
        # key -> (fetched at, models, seconds the entry stays fresh)
        self._cache: OrderedDict[str, tuple[float, dict[str, ServedModel], float]] = OrderedDict()
        self._lock = asyncio.Lock()

    def stub(self, name: str) -> Any:
        return self.stubs[name]

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.channels.values()))

    async def _fetch(self, name: str, metadata: Metadata) -> ServedModel | grpc.aio.AioRpcError:
        try:
            reply = await self.stubs[name].GetModelInfo(
                _INFO_REQUESTS[name](), metadata=metadata, timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            return exc
        info = reply.model_info
        return ServedModel(
            id=model_name(info.model_id) or name,
            capability=name,
            family=info.family,
            state=model_pb2.ModelState.Name(info.state).removeprefix("MODEL_STATE_").lower(),
            created=int(time.time() - info.load_seconds),
            info=reply,
        )

    async def models(
        self, metadata: Metadata = (), refresh: bool = False
    ) -> dict[str, ServedModel]:
        """Served models by capability, from a cache at most refresh_s old. Raises the
        services' answer when every one refused the caller's key."""
        key = dict(metadata).get("authorization", "")

        def fresh(entry: tuple[float, dict[str, ServedModel], float] | None) -> bool:
            if entry is None:
                return False
            limit = min(_RETRY_S, entry[2]) if refresh else entry[2]
            return time.monotonic() - entry[0] <= limit

        cached = self._cache.get(key)
        if fresh(cached):
            assert cached is not None
            return cached[1]
        async with self._lock:
            cached = self._cache.get(key)
            if fresh(cached):
                assert cached is not None
                return cached[1]
            names = list(self.stubs)
            found = await asyncio.gather(*(self._fetch(n, metadata) for n in names))
            refused = [f for f in found if isinstance(f, grpc.aio.AioRpcError)]
            if (
                refused
                and len(refused) == len(found)
                and all(
                    f.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
                    for f in refused
                )
            ):
                raise refused[0]
            # A capability that did not answer (loading, restarting) keeps its last model.
            known = dict(cached[1]) if cached is not None else {}
            known.update({f.capability: f for f in found if isinstance(f, ServedModel)})
            # A capability that did not answer or is not ready yet (loading when the gateway
            # started) is asked again within a second, not after the whole refresh period.
            settled = len(known) == len(names) and all(
                served.state == "ready" for served in known.values()
            )
            ttl = self.refresh_s if settled else _RETRY_S
            self._cache[key] = (time.monotonic(), known, ttl)
            self._cache.move_to_end(key)
            while len(self._cache) > MAX_CACHED_KEYS:
                self._cache.popitem(last=False)
            return known

    async def resolve(
        self, model: str, allowed: tuple[str, ...], metadata: Metadata = ()
    ) -> str | None:
        """The capability (among `allowed`) serving `model`: its model id, or the capability's
        name as an alias; None when nothing serves it."""
        if model in allowed and model in self.stubs:
            return model
        for attempt in (False, True):
            served = await self.models(metadata, refresh=attempt)
            for name in allowed:
                entry = served.get(name)
                if entry is not None and model == entry.id:
                    return name
        return None
