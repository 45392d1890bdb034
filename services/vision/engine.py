"""The vision engine: one embedding model (CLIP, SigLIP/SigLIP2, DINOv2/DINOv3) on one device.

It knows nothing of gRPC. The operations (embedding.py) prepare inputs on the CPU pool
(`prepare_images`, `prepare_texts`) in parts of at most `max_device_batch` items and submit them
as batchable jobs; the executor coalesces jobs from many requests and calls `embed_images_batch` /
`embed_texts_batch` on the device thread, one forward pass for the whole micro-batch. An
out-of-memory error leaves here unhandled: the executor splits the batch and lowers its size.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from services.runtime.devices import (
    TorchOptions,
    device_memory_bytes,
    dtype_name,
    maybe_compile,
)
from services.runtime.engine import Engine, EngineInfo
from services.runtime.errors import FailedPrecondition
from services.runtime.model_source import discover_family
from services.runtime.placement import Placement, input_device
from services.vision import loading
from services.vision.config import VisionSettings
from services.vision.families import Family, UnsupportedModel, describe
from services.vision.inputs import (
    ImageInputs,
    ImageJob,
    Padder,
    TextInputs,
    TextPreparer,
    prepare_images,
)
from services.vision.pixels import PixelTransform, choose_preprocessor

log = logging.getLogger("mmserve.vision")

# Largest decoded image left for the batch to preprocess (preprocess_in_batch): 12 MiB of RGB.
DEFER_MAX_PIXELS = 4 * 1024 * 1024
_TEXT_CAPABILITIES = ("embed_texts", "classify_zero_shot", "model_logits")
_IMAGE_CAPABILITIES = ("embed_images", "compute_similarity", "rank")


class VisionEngine(Engine):
    def __init__(self, settings: VisionSettings) -> None:
        self.settings = settings
        self.model: Any = None
        self.family: Family | None = None
        self.model_id = ""
        self.folder: Path | None = None
        self.options: TorchOptions | None = None
        self.image_processor: Any = None
        # What prepare_images runs: the verified PixelTransform or the image processor itself.
        self.preprocessor: PixelTransform | Any = None
        # Set when images are preprocessed in the batch, on the device thread's behalf.
        self._batch_pool: ThreadPoolExecutor | None = None
        self._batch_workers = 1
        self.tokenizer: Any = None
        self._prepare_text: TextPreparer | None = None
        self._pad: Padder | None = None
        self.dimension = 0
        self.text_context = 0
        self.image_size = 0
        self.logit_scale = 1.0
        self.logit_bias = 0.0

    # --- lifecycle -----------------------------------------------------------------------------

    def load(self) -> None:
        from transformers import AutoModel

        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        self.options = TorchOptions.from_settings(self.settings)
        resolved = loading.resolve(self.settings)
        self.folder, self.model_id = resolved.folder, resolved.model_id
        found = discover_family(self.folder)
        if found.library != "transformers":
            raise UnsupportedModel(f"{self.folder} is a diffusers model, not an embedding model")
        placement = Placement.from_settings(self.settings)
        placement.check_compatible(self.settings.compile)
        model = self._from_pretrained(AutoModel, self.folder, placement.from_pretrained_kwargs())
        if placement.enabled:  # accelerate placed each layer; inputs go to the first one's
            device = input_device(model, self.options.device)
            self.options = dataclasses.replace(self.options, device=device)
            model.eval()
        else:
            model.eval().to(self.options.device)
        self.family = describe(found.model_type, model)
        self.image_processor = loading.load_image_processor(self.folder)
        self.preprocessor = choose_preprocessor(
            self.image_processor, self.settings.exact_fast_preprocessing
        )
        self.image_size = loading.image_side(self.image_processor)
        if _preprocess_in_batch(self.settings.preprocess_in_batch, self.options.device.type):
            self._batch_workers = max(1, torch.get_num_threads())
            self._batch_pool = ThreadPoolExecutor(
                self._batch_workers, thread_name_prefix="preprocess"
            )
        if self.family.supports_text:
            self._load_text_side(model)
        self.model = self._compile(model)
        log.info("loaded %s (%s) from %s", type(model).__name__, self.family.name, self.folder)

    def _from_pretrained(self, cls: Any, folder: Path, placed: dict[str, Any]) -> Any:
        assert self.options is not None
        kwargs: dict[str, Any] = {"dtype": self.options.dtype, **placed}
        try:
            return cls.from_pretrained(folder, attn_implementation=self.options.attention, **kwargs)
        except (ValueError, ImportError) as exc:
            # "auto" picked sdpa or flash-attn, which some architectures lack; their default
            # attention is then the right one. An explicit choice stays an error.
            if self.settings.attention != "auto":
                raise
            log.info(
                "attention %s not supported here (%s); using default", self.options.attention, exc
            )
            return cls.from_pretrained(folder, **kwargs)

    def _load_text_side(self, model: Any) -> None:
        assert self.folder is not None
        assert self.family is not None
        tokenizer = loading.load_tokenizer(self.folder)
        positions = getattr(
            getattr(model.config, "text_config", None), "max_position_embeddings", 0
        )
        limit = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else 0
        context = min(v for v in (positions, limit) if v) if (positions or limit) else 64
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.tokenizer = tokenizer
        self.text_context = int(context)
        self._prepare_text = TextPreparer(tokenizer, self.text_context)
        self._pad = Padder(
            pad_id=int(pad_id),
            context=self.text_context,
            mode=self.family.text_padding,
            left=getattr(tokenizer, "padding_side", "right") == "left",
            with_mask="attention_mask" in tokenizer.model_input_names,
        )
        self.logit_scale = float(model.logit_scale.detach().float().exp().item())
        bias = getattr(model, "logit_bias", None)
        self.logit_bias = float(bias.detach().float().item()) if bias is not None else 0.0

    def _compile(self, model: Any) -> Any:
        """Compiles the modules the engine calls: the towers of a dual encoder (reached through
        get_*_features, not forward) or the whole backbone."""
        if not self.settings.compile:
            return model
        assert self.family is not None
        if self.family.supports_text:
            for name in ("vision_model", "text_model"):
                tower = getattr(model, name, None)
                if tower is not None:
                    maybe_compile(tower, True)
            return model
        return maybe_compile(model, True)

    def warmup(self) -> None:
        """One image (and one text) through the whole path: fills caches, compiles, and learns
        the embedding dimension."""
        blank = Image.new("RGB", (64, 48), (127, 127, 127))
        job = ImageJob(self.prepare_images([blank]), "cls")
        [vectors] = self.embed_images_batch([job])
        assert isinstance(vectors, np.ndarray)
        self.dimension = int(vectors.shape[1])
        if self.supports_text:
            texts = self.prepare_texts(["a photo of a cat"])
            self.embed_texts_batch([texts])

    def close(self) -> None:
        self.model = None
        if self._batch_pool is not None:
            self._batch_pool.shutdown(wait=False, cancel_futures=True)

    # --- facts -----------------------------------------------------------------------------

    @property
    def supports_text(self) -> bool:
        return self.family is not None and self.family.supports_text

    @property
    def activation(self) -> str:
        return self.family.activation if self.family is not None else ""

    def info(self) -> EngineInfo:
        assert self.options is not None
        assert self.family is not None
        capabilities = _IMAGE_CAPABILITIES + (_TEXT_CAPABILITIES if self.supports_text else ())
        return EngineInfo(
            family=self.family.name,
            model_id=self.model_id,
            architecture=type(self.model).__name__,
            dtype=dtype_name(self.options.dtype),
            device=str(self.options.device),
            revision=self.settings.revision or "",
            attention_implementation=str(getattr(self.model.config, "_attn_implementation", "")),
            compiled=self.settings.compile,
            capabilities=capabilities,
        )

    def memory_bytes(self) -> int | None:
        return device_memory_bytes(self.options.device) if self.options is not None else None

    # --- CPU side (thread pool) --------------------------------------------------------------

    def prepare_images(self, images: Sequence[Image.Image]) -> ImageInputs:
        # A queued decoded image costs 3 bytes a pixel until its batch runs; large ones are
        # preprocessed at once so the queue holds model-sized tensors instead.
        small = all(image.width * image.height <= DEFER_MAX_PIXELS for image in images)
        if self._batch_pool is not None and small:
            return ImageInputs({}, len(images), tuple(images))
        return prepare_images(self.preprocessor, images)

    def prepare_texts(self, texts: Sequence[str]) -> TextInputs:
        if self._prepare_text is None:
            raise self.text_unsupported()
        return self._prepare_text(texts)

    def text_unsupported(self) -> FailedPrecondition:
        name = self.family.name if self.family is not None else "this model"
        return FailedPrecondition(
            f"the loaded model ({name}) is image-only: it has no text encoder, so text inputs, "
            "zero-shot labels and model logits need a CLIP or SigLIP model"
        )

    # --- device side (executor's device thread) ----------------------------------------------

    def embed_images_batch(self, jobs: list[ImageJob]) -> list[np.ndarray]:
        """One micro-batch of image jobs -> one float32 (count, dim) array per job, from one
        forward pass over every job's images."""
        jobs = self._preprocess_deferred(jobs)
        keys = jobs[0].inputs.tensors.keys()
        merged = {key: _concat([job.inputs.tensors[key] for job in jobs]) for key in keys}
        poolings = [job.pooling for job in jobs for _ in range(job.inputs.count)]
        features = self._image_features(merged, poolings)
        return _per_job(features, [job.inputs.count for job in jobs])

    def _preprocess_deferred(self, jobs: list[ImageJob]) -> list[ImageJob]:
        """Preprocesses the batch's deferred images on every core at once, before the forward
        pass and not beside it: on a CPU the model's threads already use every core, and
        preprocessing next to them slows each of its parallel operators to the pace of the
        thread that shares a core (bench/RESULTS.md)."""
        if self._batch_pool is None or not any(job.inputs.deferred for job in jobs):
            return jobs
        images = [image for job in jobs for image in job.inputs.deferred]
        step = -(-len(images) // self._batch_workers)
        chunks = [images[i : i + step] for i in range(0, len(images), step)]
        parts = list(self._batch_pool.map(self._prepare_now, chunks))
        keys = parts[0].keys()
        merged = {key: _concat([part[key] for part in parts]) for key in keys}
        done: list[ImageJob] = []
        start = 0
        for job in jobs:
            if not job.inputs.deferred:  # preprocessed at once (a large image)
                done.append(job)
                continue
            count = job.inputs.count
            tensors = {key: value[start : start + count] for key, value in merged.items()}
            done.append(ImageJob(ImageInputs(tensors, count), job.pooling))
            start += count
        return done

    def _prepare_now(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        return prepare_images(self.preprocessor, images).tensors

    def embed_texts_batch(self, jobs: list[TextInputs]) -> list[np.ndarray]:
        """One micro-batch of text jobs -> one float32 (count, dim) array per job, from one
        forward pass over every job's texts."""
        features = self._text_features([ids for job in jobs for ids in job.ids])
        return _per_job(features, [job.count for job in jobs])

    @torch.inference_mode()
    def _image_features(
        self, tensors: dict[str, torch.Tensor], poolings: Sequence[str]
    ) -> torch.Tensor:
        assert self.options is not None
        assert self.family is not None
        inputs = {key: self._to_device(value) for key, value in tensors.items()}
        if self.family.supports_text:
            return _pooled(self.model.get_image_features(**inputs))
        states = self.model(pixel_values=inputs["pixel_values"]).last_hidden_state
        cls = states[:, 0]
        patches = states[:, 1 + self.family.register_tokens :]
        mean = patches.mean(dim=1)
        use_mean = torch.tensor([p == "mean" for p in poolings], device=states.device)
        return torch.where(use_mean[:, None], mean, cls)

    @torch.inference_mode()
    def _text_features(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        assert self._pad is not None
        assert self.options is not None
        batch = {key: value.to(self.options.device) for key, value in self._pad(rows).items()}
        return _pooled(self.model.get_text_features(**batch))

    def _to_device(self, value: torch.Tensor) -> torch.Tensor:
        assert self.options is not None
        if value.is_floating_point():
            return value.to(self.options.device, self.options.dtype)
        return value.to(self.options.device)


def _preprocess_in_batch(choice: str, device_type: str) -> bool:
    """auto: in the batch on a CPU (the model and preprocessing share its cores), beside the
    forward pass on an accelerator (the CPU is free while the device computes)."""
    return choice == "on" or (choice == "auto" and device_type == "cpu")


def _per_job(features: torch.Tensor, counts: list[int]) -> list[np.ndarray]:
    """The forward pass's rows, cut back into each job's own (count, dim) float32 array."""
    rows = features.float().cpu().numpy()
    offsets = np.cumsum([0, *counts])
    # Copies, so one caller's answer does not keep the whole batch's array alive.
    return [rows[offsets[i] : offsets[i + 1]].copy() for i in range(len(counts))]


def _concat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _pooled(output: Any) -> torch.Tensor:
    """transformers 5 returns a model output whose pooler_output holds the projected
    embeddings; older versions returned the tensor itself."""
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output
