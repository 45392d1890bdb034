"""Loading a diffusers pipeline folder, and its image-to-image twin over the same weights.

The family comes from the folder's model_index.json. HunyuanDiT and Qwen-Image load through
their own pipeline classes; everything else through AutoPipelineForText2Image (Stable Diffusion
1.x/2.x, SDXL, SD3, FLUX, ...), falling back to DiffusionPipeline for pipelines the auto
mappings do not know. Image-to-image, inpainting (services.t2i.inpainting) and instruction
edits (services.t2i.editing) reuse the loaded components with `from_pipe`, so the weights are
in memory once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image, DiffusionPipeline

from services.runtime.builtin import resolve_model
from services.runtime.devices import TorchOptions, maybe_compile
from services.runtime.model_source import ModelFamily, discover_family
from services.runtime.placement import Placement
from services.t2i.builtin import BUILTINS
from services.t2i.config import T2ISettings
from services.t2i.editing import editing_pipeline
from services.t2i.inpainting import inpainting_pipeline

log = logging.getLogger("mmserve.t2i.loader")

# Families whose pipelines the auto mappings do not pick (or pick differently) for our needs.
# A Qwen-Image-Edit checkpoint (QwenImageEditPipeline in model_index.json) has Qwen-Image's
# components plus a processor: it serves text-to-image through QwenImagePipeline too, and its
# edit pipeline comes from services.t2i.editing.
_TEXT_TO_IMAGE_CLASSES = {
    "hunyuan_dit": "HunyuanDiTPipeline",
    "qwen_image": "QwenImagePipeline",
    "qwen_image_edit": "QwenImagePipeline",
}
# `DiffusionPipeline.from_pipe` cannot switch Qwen-Image's task; its own class can.
_IMAGE_TO_IMAGE_CLASSES = {
    "qwen_image": "QwenImageImg2ImgPipeline",
    "qwen_image_edit": "QwenImageImg2ImgPipeline",
}


@dataclass
class LoadedPipelines:
    """The pipelines of one model, sharing every component."""

    text_to_image: Any
    image_to_image: Any | None
    family: ModelFamily
    folder: Path
    model_id: str
    inpainting: Any | None = None
    editing: Any | None = None  # instruction edits (Qwen-Image-Edit)

    def all(self) -> list[Any]:
        """Every pipeline present, text-to-image first."""
        pipes = (self.text_to_image, self.image_to_image, self.inpainting, self.editing)
        return [pipe for pipe in pipes if pipe is not None]


def load_pipelines(settings: T2ISettings, options: TorchOptions) -> LoadedPipelines:
    if Placement.from_settings(settings).enabled:
        # diffusers places whole components, not layers; offloading is its way to fit.
        raise ValueError(
            "device_map: not supported for diffusers pipelines; use cpu_offload 'model' or "
            "'sequential' to run a pipeline larger than the GPU"
        )
    resolved = resolve_model(settings, BUILTINS, legacy=("tiny_model", settings.tiny_model))
    folder, model_id = resolved.folder, resolved.model_id
    family = discover_family(folder)
    if family.library != "diffusers":
        raise ValueError(
            f"{model_id!r} is a {family.library} model ({family.class_name or family.family}), "
            "not a diffusers pipeline folder with model_index.json"
        )
    pipe = _load_text_to_image(folder, family, options.dtype, settings.variant)
    if settings.scheduler:
        pipe.scheduler = _scheduler(settings.scheduler, pipe.scheduler.config)
    # Made before placement so both pipelines share the components offload hooks attach to.
    image_pipe = _image_to_image(pipe, family, options.dtype)
    inpaint_pipe = inpainting_pipeline(pipe, family.family, **_dtype_kwargs(options.dtype))
    edit_pipe = editing_pipeline(pipe, family.family, folder, **_dtype_kwargs(options.dtype))
    _place(pipe, settings, options)
    _set_attention(pipe, options.attention)
    _configure_vae(pipe, settings)
    denoiser = _denoiser(pipe)
    if options.compile and denoiser is not None:
        maybe_compile(denoiser, True, options.compile_mode)
    loaded = LoadedPipelines(pipe, image_pipe, family, folder, model_id, inpaint_pipe, edit_pipe)
    for each in loaded.all():
        each.set_progress_bar_config(disable=True)
    log.info(
        "loaded %s (%s) from %s; also: %s",
        type(pipe).__name__,
        family.family,
        folder,
        ", ".join(type(each).__name__ for each in loaded.all()[1:]) or "nothing else",
    )
    return loaded


def _load_text_to_image(
    folder: Path, family: ModelFamily, dtype: torch.dtype, variant: str | None
) -> Any:
    kwargs: dict[str, Any] = _dtype_kwargs(dtype)
    if variant:
        kwargs["variant"] = variant
    class_name = _TEXT_TO_IMAGE_CLASSES.get(family.family)
    if class_name is not None:
        return getattr(diffusers, class_name).from_pretrained(folder, **kwargs)
    try:
        return AutoPipelineForText2Image.from_pretrained(folder, **kwargs)
    except ValueError as exc:
        # Not in the auto mappings (a community or newer pipeline): its own class, as named in
        # model_index.json.
        log.info("AutoPipelineForText2Image cannot load %s (%s); using its own class", folder, exc)
        return DiffusionPipeline.from_pretrained(folder, **kwargs)


def _image_to_image(pipe: Any, family: ModelFamily, dtype: torch.dtype) -> Any | None:
    # from_pipe casts the shared modules to its dtype (float32 unless told), so pass ours.
    class_name = _IMAGE_TO_IMAGE_CLASSES.get(family.family)
    try:
        if class_name is not None:
            return getattr(diffusers, class_name).from_pipe(pipe, **_dtype_kwargs(dtype))
        return AutoPipelineForImage2Image.from_pipe(pipe, **_dtype_kwargs(dtype))
    except ValueError as exc:  # the family has no image-to-image pipeline (HunyuanDiT)
        log.info("no image-to-image pipeline for %s: %s", family.family, exc)
        return None


def _dtype_kwargs(dtype: torch.dtype) -> dict[str, Any]:
    # diffusers renamed torch_dtype to dtype (the old name warns); older releases know only
    # torch_dtype.
    from diffusers.pipelines import pipeline_utils

    return {"dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype": dtype}


def _scheduler(name: str, config: Any) -> Any:
    cls = getattr(diffusers, name, None)
    if not isinstance(cls, type) or not issubclass(cls, diffusers.SchedulerMixin):
        raise ValueError(f"scheduler {name!r} is not a diffusers scheduler class")
    return cls.from_config(config)


def _place(pipe: Any, settings: T2ISettings, options: TorchOptions) -> None:
    if settings.cpu_offload == "none":
        pipe.to(options.device)
        return
    if options.device.type == "cpu":
        raise ValueError("cpu_offload needs an accelerator; the device is cpu")
    if settings.cpu_offload == "model":
        pipe.enable_model_cpu_offload(device=options.device)
    else:
        pipe.enable_sequential_cpu_offload(device=options.device)


def _denoiser(pipe: Any) -> torch.nn.Module | None:
    for name in ("transformer", "unet", "prior"):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    return None


def _set_attention(pipe: Any, attention: str) -> None:
    """sdpa is what diffusers models use by default; eager and flash-attn are opt-in."""
    if attention == "sdpa":
        return
    for name in ("transformer", "unet", "vae"):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        try:
            if attention == "flash_attention_2":
                module.set_attention_backend("flash")
            elif hasattr(module, "set_default_attn_processor"):
                module.set_default_attn_processor()
            else:
                module.set_attention_backend("_native_math")
        except Exception as exc:  # components whose processors cannot switch keep sdpa
            log.warning("attention %s not applied to %s: %s", attention, name, exc)


def _configure_vae(pipe: Any, settings: T2ISettings) -> None:
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return
    if settings.vae_slicing and hasattr(vae, "enable_slicing"):
        vae.enable_slicing()
    if settings.vae_tiling and hasattr(vae, "enable_tiling"):
        vae.enable_tiling()


def native_size(pipe: Any) -> int:
    """The output side the model was trained for (512 SD 1.x, 1024 SDXL/FLUX/Qwen-Image...)."""
    factor = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    sample = getattr(pipe, "default_sample_size", None)
    if sample is None:
        denoiser = _denoiser(pipe)
        sample = getattr(getattr(denoiser, "config", None), "sample_size", None)
    if isinstance(sample, list | tuple):
        sample = sample[0]
    return int(sample) * factor if sample else 512


def latent_multiple(pipe: Any) -> int:
    """The smallest size step the latents allow: the VAE factor times the patch size."""
    factor = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    denoiser = _denoiser(pipe)
    patch = getattr(getattr(denoiser, "config", None), "patch_size", None)
    return factor * (int(patch) if isinstance(patch, int) and patch > 0 else 1)
