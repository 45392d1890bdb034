"""Cheap previews of the current latents: one linear map from latent channels to RGB.

A full VAE decode per step would cost about as much as a denoising step on large images; a
per-pixel linear projection costs nothing and shows composition and colours, which is all a
progress preview needs. The projection is fitted once at load, for whatever VAE the pipeline
has: synthetic colour fields are encoded, brought into the space the denoiser works in (the
pipeline's own scaling/shift or mean/std), and least squares maps those latents back to the
fields' colours. So new families need no hand-tuned coefficients.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("mmserve.t2i.previews")

_CALIBRATION_IMAGES = 8
_CALIBRATION_SEED = 1234


@dataclass(frozen=True)
class PreviewFrame:
    """A preview emitted during a job (ctx.emit): one image's latents as RGB."""

    step: int
    total: int
    elapsed_seconds: float
    eta_seconds: float
    rgb: np.ndarray[Any, Any]  # uint8 (h, w, 3) at latent resolution


@dataclass(frozen=True)
class LatentPreviewer:
    """Projects latents (any of the layouts pipelines use) to a small RGB array."""

    weights: torch.Tensor  # (channels + 1, 3): the last row is the bias
    vae_scale_factor: int

    @property
    def channels(self) -> int:
        return int(self.weights.shape[0]) - 1

    def rgb(self, latents: torch.Tensor, height: int, width: int) -> np.ndarray[Any, Any]:
        """The first image of a batch as uint8 (h, w, 3) at latent resolution. `height` and
        `width` are the output's, needed to unpack the packed layouts of FLUX/Qwen-Image."""
        grid = self._grid(latents[:1], height, width)[0].float()  # (C, h, w)
        weights = self.weights.to(grid.device)
        rgb = torch.einsum("chw,cr->hwr", grid, weights[:-1]) + weights[-1]
        return (rgb.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu().numpy()

    def _grid(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if latents.dim() == 4:  # (B, C, h, w): UNets, DiTs
            return latents
        if latents.dim() == 5:  # (B, C, T, h, w): video-style VAEs, first frame
            return latents[:, :, 0]
        if latents.dim() == 3:  # (B, h/2 * w/2, C*4): 2x2 patches packed into tokens
            batch, _, packed = latents.shape
            rows = 2 * (height // (self.vae_scale_factor * 2))
            cols = 2 * (width // (self.vae_scale_factor * 2))
            channels = packed // 4
            grid = latents.reshape(batch, rows // 2, cols // 2, channels, 2, 2)
            return grid.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, rows, cols)
        raise ValueError(f"unexpected latents shape {tuple(latents.shape)}")


def calibrate(pipe: Any) -> LatentPreviewer | None:
    """Fits the projection for `pipe`'s VAE; None when the pipeline has no usable VAE (the
    service then sends no previews and says so in its log)."""
    vae = getattr(pipe, "vae", None)
    factor = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    if vae is None or not hasattr(vae, "encode"):
        log.warning("no VAE with an encoder: previews are off")
        return None
    try:
        weights = _fit(vae, factor)
    except Exception:  # an exotic VAE must not stop the service; previews just go off
        log.warning("could not fit the latent preview projection: previews are off", exc_info=True)
        return None
    return LatentPreviewer(weights, factor)


@torch.inference_mode()
def _fit(vae: Any, factor: int) -> torch.Tensor:
    side = factor * 16
    generator = torch.Generator().manual_seed(_CALIBRATION_SEED)
    # Smooth random colour fields: coarse random colours, bilinearly upsampled, so latents see
    # flat regions and gradients of every hue rather than noise.
    coarse = torch.rand(_CALIBRATION_IMAGES, 3, 4, 4, generator=generator)
    images = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    device = next(vae.parameters()).device
    pixels = (images * 2.0 - 1.0).to(device=device, dtype=vae.dtype)
    video = getattr(vae.config, "temperal_downsample", None) is not None
    encoded = vae.encode(pixels.unsqueeze(2) if video else pixels).latent_dist.mean
    if video:
        encoded = encoded[:, :, 0]
    latents = _to_denoiser_space(encoded.float().cpu(), vae.config)
    targets = F.adaptive_avg_pool2d(images, latents.shape[-2:])
    channels = latents.shape[1]
    inputs = latents.permute(0, 2, 3, 1).reshape(-1, channels)
    inputs = torch.cat([inputs, torch.ones(inputs.shape[0], 1)], dim=1)
    outputs = targets.permute(0, 2, 3, 1).reshape(-1, 3)
    solution = torch.linalg.lstsq(inputs, outputs).solution
    if not torch.isfinite(solution).all():
        raise ValueError("the preview projection is not finite")
    return solution


def _to_denoiser_space(latents: torch.Tensor, config: Any) -> torch.Tensor:
    """Applies the normalization pipelines apply after encoding (and undo before decoding)."""
    scale = getattr(config, "scaling_factor", None) or 1.0
    mean = getattr(config, "latents_mean", None)
    std = getattr(config, "latents_std", None)
    if mean is not None and std is not None:  # SDXL-style and Qwen-Image VAEs
        shape = (1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=latents.dtype).view(shape)
        std_t = torch.tensor(std, dtype=latents.dtype).view(shape)
        return (latents - mean_t) / std_t * scale
    shift = getattr(config, "shift_factor", None) or 0.0  # SD3 and FLUX shift, then scale
    return (latents - shift) * scale
