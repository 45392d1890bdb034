"""Settings of the vl service: the shared server settings plus chat limits, image resolution
bounds and the batching option."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from services.runtime.builtin import model_field
from services.runtime.chat.settings import ChatSettings
from services.vl.builtin import BUILTINS

# Qwen2-VL / Qwen2.5-VL resize images so that width * height lands in [min_pixels, max_pixels],
# in 28x28 units (one image token each after the 2x2 merge). These are the numbers Qwen's model
# cards use: at least 4 units (one token), by default at most 1280 tokens, and at most 16384.
_PIXEL_UNIT = 28 * 28
QWEN_MIN_PIXELS = 4 * _PIXEL_UNIT  # 3136
QWEN_DEFAULT_MAX_PIXELS = 1280 * _PIXEL_UNIT  # 1003520
QWEN_MAX_PIXELS = 16384 * _PIXEL_UNIT  # 12845056


class VLSettings(ChatSettings):
    """mmserve vl: chat about images with Qwen2.5-VL, Qwen2-VL or any transformers
    image-text-to-text model, unary and token streaming."""

    section = "vl"

    port: int = Field(50052, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int | None = Field(
        9092, ge=0, le=65535, description="Prometheus /metrics HTTP port; 0 free, unset off."
    )
    model: str = model_field(BUILTINS)
    # --- image resolution (Qwen-style min/max pixel bounds of the image processor) ---
    default_min_pixels: int = Field(
        QWEN_MIN_PIXELS, ge=1, description="Default lower bound of width*height after resizing."
    )
    default_max_pixels: int = Field(
        QWEN_DEFAULT_MAX_PIXELS,
        ge=1,
        description="Default upper bound of width*height after resizing (image tokens grow "
        "with it).",
    )
    resolution_min_pixels: int = Field(
        QWEN_MIN_PIXELS, ge=1, description="Smallest min_pixels a request may ask for."
    )
    resolution_max_pixels: int = Field(
        QWEN_MAX_PIXELS, ge=1, description="Largest max_pixels a request may ask for."
    )
    # --- concurrency ---
    # batching and batch_max_size are the chat core's (ChatSettings).
    batch_max_wait_ms: float = Field(
        10.0,
        ge=0,
        description="Accepted for compatibility and unused: a request joins the running decode "
        "batch at its next token, without waiting for companions.",
    )
    # --- model ---
    trust_remote_code: bool = Field(
        False, description="Allow model folders that ship their own Python code (auto_map)."
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> Self:
        if self.resolution_min_pixels > self.resolution_max_pixels:
            raise ValueError("resolution_min_pixels must be <= resolution_max_pixels")
        if not (
            self.resolution_min_pixels
            <= self.default_min_pixels
            <= self.default_max_pixels
            <= self.resolution_max_pixels
        ):
            raise ValueError(
                "need resolution_min_pixels <= default_min_pixels <= default_max_pixels "
                "<= resolution_max_pixels"
            )
        return self
