"""What the vision tests share: test images, a served-model fixture, the in-process reference
(the model and processor loaded the way users load them) and error-detail decoding."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch
from google.rpc import error_details_pb2, status_pb2
from PIL import Image

from mmserve.common.v1 import media_pb2
from mmserve.vision.v1 import vision_pb2, vision_pb2_grpc
from services.runtime.server import ServiceServer
from services.vision.builtin import BUILTINS
from services.vision.capability import CAPABILITY
from tests.support.servers import running_server

# Tolerance between the served path (batched, padded per batch) and a plain in-process call.
ATOL = 1e-5


def noise_image(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A distinct RGB image per seed: random pixels make every embedding clearly different."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def image_pb(image: Image.Image) -> media_pb2.Image:
    return media_pb2.Image(data=png(image), format=media_pb2.IMAGE_FORMAT_PNG)


def image_item(image: Image.Image) -> vision_pb2.VisionInput:
    return vision_pb2.VisionInput(image=image_pb(image))


def text_item(text: str) -> vision_pb2.VisionInput:
    return vision_pb2.VisionInput(text=text)


def vectors(embeddings: Sequence[vision_pb2.Embedding]) -> np.ndarray:
    return np.array([list(e.values) for e in embeddings], dtype=np.float32)


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


@dataclass
class Served:
    server: ServiceServer
    stub: vision_pb2_grpc.VisionServiceStub
    channel: grpc.aio.Channel


@asynccontextmanager
async def served(model: str, *argv: str) -> AsyncIterator[Served]:
    """A real vision server on a free loopback port with a generated client stub."""
    async with running_server(CAPABILITY, ["--model", model, *argv]) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Served(server, vision_pb2_grpc.VisionServiceStub(channel), channel)


class Reference:
    """The same model folder, loaded and called in-process the way the model cards show."""

    def __init__(self, name: str) -> None:
        from transformers import AutoImageProcessor, AutoModel, AutoProcessor

        self.name = name
        self.folder: Path = BUILTINS.get(name).build()
        self.model = AutoModel.from_pretrained(self.folder).eval()
        self.dual = name in ("clip", "siglip", "siglip2")
        if self.dual:
            self.processor = AutoProcessor.from_pretrained(self.folder)
            self.image_processor = self.processor.image_processor
        elif name == "dinov3":  # its processor needs torchvision: the service's PIL fallback
            from services.vision.loading import load_image_processor

            self.image_processor = load_image_processor(self.folder)
        else:
            self.image_processor = AutoImageProcessor.from_pretrained(self.folder)

    @torch.no_grad()
    def images(self, images: Sequence[Image.Image], pooling: str = "cls") -> np.ndarray:
        if self.dual:
            inputs = self.processor(images=list(images), return_tensors="pt")
            return self.model.get_image_features(**inputs).pooler_output.numpy()
        inputs = self.image_processor(images=list(images), return_tensors="pt")
        states = self.model(**inputs).last_hidden_state
        if pooling == "mean":
            registers = getattr(self.model.config, "num_register_tokens", 0) or 0
            return states[:, 1 + registers :].mean(dim=1).numpy()
        return states[:, 0].numpy()

    @torch.no_grad()
    def texts(self, texts: Sequence[str]) -> np.ndarray:
        # SigLIP's model cards pad to the full context ("max_length"); CLIP pads per batch.
        # Siglip2Processor applies padding="max_length" itself.
        kwargs: dict[str, Any] = {"truncation": True}
        if self.name == "siglip":
            kwargs["padding"] = "max_length"
        elif self.name == "clip":
            kwargs["padding"] = True
        inputs = self.processor(text=list(texts), return_tensors="pt", **kwargs)
        return self.model.get_text_features(**inputs).pooler_output.numpy()

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    @property
    def logit_bias(self) -> float:
        bias = getattr(self.model, "logit_bias", None)
        return float(bias.detach()) if bias is not None else 0.0


def rpc_details(exc: grpc.aio.AioRpcError) -> dict[str, Any]:
    """The google.rpc details a client receives, by type name."""
    found: dict[str, Any] = {}
    for key, value in exc.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        for detail in status_pb2.Status.FromString(value).details:
            for cls in (error_details_pb2.BadRequest, error_details_pb2.ErrorInfo):
                if detail.Is(cls.DESCRIPTOR):
                    message = cls()
                    detail.Unpack(message)
                    found[cls.__name__] = message
    return found


def violated_fields(exc: grpc.aio.AioRpcError) -> list[str]:
    bad = rpc_details(exc).get("BadRequest")
    return [v.field for v in bad.field_violations] if bad is not None else []
