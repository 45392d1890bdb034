"""The t2i engine: one diffusers pipeline on one device, run on the executor's device thread.

It knows nothing of gRPC. The operations (services.t2i.operations) turn requests into a
`GenerationPlan` (validated against `limits` before queueing), run `generate` as a job, and
encode the returned PIL images in the CPU pool. During a job, `callback_on_step_end` reports
each step, emits previews every N steps, and checks the job's cancel token, so a cancelled or
timed-out job stops at the next step instead of running to the end.
"""

from __future__ import annotations

import gc
import inspect
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from PIL import Image

from services.runtime import errors
from services.runtime.devices import TorchOptions, device_memory_bytes, dtype_name
from services.runtime.engine import Engine, EngineInfo
from services.runtime.executor import JobContext
from services.t2i import batching
from services.t2i.adapters import Adapters, check_adapters
from services.t2i.caching import StepCache
from services.t2i.config import T2ISettings
from services.t2i.families import FamilyProfile, GenerationLimits, profile_for, resolve_limits
from services.t2i.loader import LoadedPipelines, latent_multiple, load_pipelines, native_size
from services.t2i.previews import LatentPreviewer, PreviewFrame, calibrate
from services.t2i.row_cut import RowCutter
from services.t2i.schedulers import Schedulers
from services.t2i.validation import GenerationPlan, GenerationRequest, plan_generation

log = logging.getLogger("mmserve.t2i.engine")

_SEED_MODULUS = 2**64
_TOKENIZERS = ("tokenizer", "tokenizer_2", "tokenizer_3")
# Tokenizers without a real limit report a huge model_max_length; ignore those.
_UNBOUNDED_TOKENS = 1_000_000


@dataclass(frozen=True)
class GenerationOutput:
    images: list[Image.Image]
    seed: int
    steps: int
    prompt_truncated: bool
    prompt_tokens: int


class T2IEngine(Engine):
    def __init__(self, settings: T2ISettings) -> None:
        self.settings = settings
        self._options: TorchOptions | None = None
        self._loaded: LoadedPipelines | None = None
        self._profile: FamilyProfile = profile_for("")
        self._limits: GenerationLimits | None = None
        self._previewer: LatentPreviewer | None = None
        self._call_args: dict[int, frozenset[str]] = {}
        self._adapters = Adapters()
        self._schedulers = Schedulers()
        self._cache = StepCache()
        self._row_guidance = False
        self._empty_negative_zeroed = False

    # --- lifecycle --------------------------------------------------------------------------

    def load(self) -> None:
        settings = self.settings
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self._options = TorchOptions.from_settings(settings)
        loaded = load_pipelines(settings, self._options)
        self._loaded = loaded
        self._profile = profile_for(loaded.family.family)
        self._previewer = calibrate(loaded.text_to_image)
        self._row_guidance = self._profile.row_guidance and not _guidance_embedded(
            loaded.text_to_image
        )
        self._empty_negative_zeroed = bool(
            getattr(loaded.text_to_image.config, "force_zeros_for_empty_prompt", False)
        )
        self._schedulers = Schedulers(loaded.text_to_image.scheduler)
        self._adapters = Adapters.load(loaded.text_to_image, settings.lora_dir)
        self._cache = StepCache.apply(
            loaded.text_to_image, settings.step_cache, settings.step_cache_threshold
        )
        self._limits = resolve_limits(
            self._profile,
            settings,
            native_size=native_size(loaded.text_to_image),
            min_multiple=latent_multiple(loaded.text_to_image),
            max_prompt_tokens=self._token_limits()[0][1] if self._token_limits() else 0,
            supports_image_to_image=loaded.image_to_image is not None,
            scheduler_max_steps=_scheduler_steps(loaded.text_to_image),
        )
        self._limits = replace(
            self._limits,
            supports_inpainting=loaded.inpainting is not None,
            supports_image_editing=loaded.editing is not None,
        )

    def warmup(self) -> None:
        """One short generation, so the first request pays no start-up cost: at the smallest
        size, or with torch.compile at the default size (the shape most requests compile for)."""
        if self.settings.warmup_steps == 0:
            return
        limits = self.limits
        compiled = self.settings.compile
        plan = GenerationPlan(
            prompt="warm-up",
            negative_prompt="",
            width=limits.default_width if compiled else limits.min_size,
            height=limits.default_height if compiled else limits.min_size,
            steps=min(self.settings.warmup_steps, limits.max_steps),
            guidance_scale=limits.default_guidance_scale,
            seed=0,
            num_images=1,
            preview_every=1 if self._previewer is not None else 0,
        )
        started = time.monotonic()
        self.generate(JobContext("warmup", "warmup"), plan)
        log.info("warm-up generation took %.2fs", time.monotonic() - started)

    def close(self) -> None:
        self._loaded = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # --- facts ------------------------------------------------------------------------------

    @property
    def limits(self) -> GenerationLimits:
        if self._limits is None:
            raise errors.Unavailable("model is not loaded")
        return self._limits

    @property
    def loaded_limits(self) -> GenerationLimits | None:
        """The limits once loaded, None before (GetModelInfo answers while loading too)."""
        return self._limits

    @property
    def pipelines(self) -> LoadedPipelines:
        if self._loaded is None:
            raise errors.Unavailable("model is not loaded")
        return self._loaded

    @property
    def row_guidance(self) -> bool:
        """Whether rows of one denoising batch may each have their own guidance scale."""
        return self._row_guidance

    @property
    def empty_negative_zeroed(self) -> bool:
        """Whether a request without a negative prompt is guided against zero embeddings
        (SDXL's `force_zeros_for_empty_prompt`) rather than against the encoded "" prompt."""
        return self._empty_negative_zeroed

    @property
    def scheduler_name(self) -> str:
        return type(self.pipelines.text_to_image.scheduler).__name__

    @property
    def scheduler_names(self) -> tuple[str, ...]:
        """Schedulers a request may name (GenerationParams.scheduler)."""
        return self._schedulers.names

    @property
    def adapter_names(self) -> tuple[str, ...]:
        """LoRA adapters a request may name (GenerationParams.adapters)."""
        return self._adapters.names

    @property
    def previews_available(self) -> bool:
        return self._previewer is not None

    def info(self) -> EngineInfo:
        loaded, options = self.pipelines, self._options
        assert options is not None
        capabilities = ["text_to_image"]
        if loaded.image_to_image is not None:
            capabilities.append("image_to_image")
        if loaded.inpainting is not None:
            capabilities.append("inpainting")
        if loaded.editing is not None:
            capabilities.append("image_editing")
        if self._previewer is not None:
            capabilities.append("step_previews")
        if self._profile.negative_prompt:
            capabilities.append("negative_prompt")
        if self._cache.kind != "none":
            capabilities.append(f"step_cache_{self._cache.kind}")
        return EngineInfo(
            family=loaded.family.family,
            model_id=loaded.model_id,
            architecture=type(loaded.text_to_image).__name__,
            dtype=dtype_name(options.dtype),
            device=str(options.device),
            revision=self.settings.revision or "",
            attention_implementation=options.attention,
            compiled=options.compile,
            capabilities=tuple(capabilities),
        )

    def memory_bytes(self) -> int | None:
        return device_memory_bytes(self._options.device) if self._options else None

    # --- requests ---------------------------------------------------------------------------

    def plan(
        self, request: GenerationRequest, problems: errors.Violations | None = None
    ) -> GenerationPlan:
        """Validates `request` and fills in the defaults; see `plan_generation`."""
        report_here = problems is None
        problems = errors.Violations() if problems is None else problems
        plan = plan_generation(request, self.limits, problems)
        adapters = check_adapters(
            request.adapters, self._adapters.names, self.settings.max_adapter_weight, problems
        )
        scheduler = self._schedulers.check(request.scheduler, problems)
        if report_here:
            problems.raise_if_any()
        return replace(plan, adapters=adapters, scheduler=scheduler)

    @contextmanager
    def configured(self, plan: GenerationPlan) -> Iterator[None]:
        """The pipelines set up for `plan` inside the block: its LoRA adapters and scheduler,
        the step cache's state cleared. Device thread only; every run, alone or batched, goes
        through here."""
        self._adapters.activate(plan.adapters)
        self._cache.reset()
        with self._schedulers.using(self.pipelines.all(), plan.scheduler):
            yield

    def generate(self, ctx: JobContext, plan: GenerationPlan) -> GenerationOutput:
        """Runs one plan on the device thread; cancellable at every step."""
        pipe = self._pipeline_for(plan)
        truncated, tokens = self._prompt_tokens(plan)
        state = _StepState(ctx, plan, self._previewer, time.monotonic())
        images = self._run(pipe, plan, self._call_kwargs(pipe, plan, state))
        ctx.check()  # a cancel that arrived during the final decode
        return GenerationOutput(images, plan.seed, state.steps_done, truncated, tokens)

    def generate_batch(
        self, contexts: Sequence[JobContext], plans: Sequence[GenerationPlan]
    ) -> list[GenerationOutput | Exception]:
        """Runs plans of one `batching.batch_key` as one pipeline call, each row with its own
        prompts, seeds and previews; a row cancelled during the call gets its error."""
        if len(plans) == 1:
            return [self.generate(contexts[0], plans[0])]
        pipe = self._pipeline_for(plans[0])
        rows = batching.rows_of(contexts, plans)
        tokens = [self._prompt_tokens(plan) for plan in plans]
        steps = batching.BatchSteps(rows, self._previewer)
        accepted = self._accepted_args(pipe)
        kwargs = self._call_kwargs(pipe, plans[0], steps)
        negatives = [self._negative(plan, accepted) for plan in plans]
        per_row = batching.row_inputs(rows, negatives)
        if self.row_guidance:
            per_row[self._profile.cfg_argument] = batching.row_guidance(rows)
        kwargs.update({key: value for key, value in per_row.items() if key in accepted})
        if self._rows_can_leave(pipe):
            steps.cutter = RowCutter(per_row["generator"], per_row.get(self._profile.cfg_argument))
            kwargs["callback_on_step_end_tensor_inputs"] = list(pipe._callback_tensor_inputs)
        generated = self._run(pipe, plans[0], kwargs)
        images = batching.split_images(steps.present, generated)  # the rows left after cuts
        computed = {id(row.ctx): found for row, found in zip(steps.present, images, strict=True)}
        outputs: list[GenerationOutput | Exception] = []
        for row, (truncated, count) in zip(rows, tokens, strict=True):
            error = row.ctx.cancel.error
            if error is not None or id(row.ctx) not in computed:
                outputs.append(error or RuntimeError("the row left the batch"))
                continue
            outputs.append(
                GenerationOutput(
                    computed[id(row.ctx)], row.plan.seed, steps.steps_done, truncated, count
                )
            )
        return outputs

    def _rows_can_leave(self, pipe: Any) -> bool:
        """Whether a cancelled row can be cut out of this pipeline's running loop: its family's
        loop rebuilds every per-row input from the step-end tensors (services.t2i.row_cut), and
        no step cache holds the previous step's rows."""
        return (
            self._profile.row_cut
            and self._cache.kind == "none"
            and pipe is self.pipelines.text_to_image
            and "latents" in getattr(pipe, "_callback_tensor_inputs", ())
            # An LCM UNet's guidance embedding is computed once per batch, outside the loop.
            and not _guidance_embedded(pipe)
        )

    def _run(self, pipe: Any, plan: GenerationPlan, kwargs: dict[str, Any]) -> list[Image.Image]:
        """The pipeline call set up for `plan` (every row of a batch shares its setup)."""
        try:
            with torch.inference_mode(), self.configured(plan):
                return list(pipe(**kwargs).images)
        except errors.ServingError:
            self._release(pipe)
            raise
        except Exception as exc:
            self._release(pipe)
            if _is_allocation_failure(exc):
                raise errors.OutOfMemory(f"out of memory generating images: {exc}") from exc
            raise

    def _pipeline_for(self, plan: GenerationPlan) -> Any:
        loaded = self.pipelines
        if plan.edit:
            if loaded.editing is None:
                raise errors.FailedPrecondition("this model has no instruction-edit pipeline")
            return loaded.editing
        if plan.mask is not None:
            if loaded.inpainting is None:
                raise errors.FailedPrecondition("this model family has no inpainting pipeline")
            return loaded.inpainting
        if plan.image is None:
            return loaded.text_to_image
        if loaded.image_to_image is None:
            raise errors.Unimplemented("this model family has no image-to-image pipeline")
        return loaded.image_to_image

    def _call_kwargs(self, pipe: Any, plan: GenerationPlan, state: _StepState) -> dict[str, Any]:
        profile = self._profile
        accepted = self._accepted_args(pipe)
        generators = [
            # CPU generators: the same noise on any device, so a seed reproduces everywhere.
            torch.Generator("cpu").manual_seed((plan.seed + i) % _SEED_MODULUS)
            for i in range(plan.num_images)
        ]
        kwargs: dict[str, Any] = {
            "prompt": plan.prompt,
            "num_inference_steps": plan.steps,
            "num_images_per_prompt": plan.num_images,
            "generator": generators,
            "output_type": "pil",
            "callback_on_step_end": state.on_step_end,
            "callback_on_step_end_tensor_inputs": ["latents"],
        }
        if "height" in accepted:
            kwargs["height"] = plan.height
            kwargs["width"] = plan.width
        if plan.image is not None:
            kwargs["image"] = plan.image
            kwargs["strength"] = plan.strength
        if plan.mask is not None:
            kwargs["mask_image"] = plan.mask
        kwargs[profile.cfg_argument] = plan.guidance_scale
        if profile.cfg_argument != "guidance_scale" and _guidance_distilled(pipe):
            kwargs["guidance_scale"] = plan.guidance_scale
        if "negative_prompt" in accepted:
            kwargs["negative_prompt"] = self._negative(plan, accepted)
        if "use_resolution_binning" in accepted:
            kwargs["use_resolution_binning"] = self.settings.resolution_binning
        return {k: v for k, v in kwargs.items() if k in accepted}

    def _negative(self, plan: GenerationPlan, accepted: frozenset[str]) -> str | None:
        """The negative prompt the pipeline gets; None where the family takes none."""
        profile = self._profile
        if not profile.negative_prompt or "negative_prompt" not in accepted:
            return None
        negative = plan.negative_prompt or None
        if negative is None and profile.blank_negative_for_cfg and plan.guidance_scale > 1:
            negative = " "
        return negative

    def _accepted_args(self, pipe: Any) -> frozenset[str]:
        key = id(pipe)
        if key not in self._call_args:
            self._call_args[key] = frozenset(inspect.signature(pipe.__call__).parameters)
        return self._call_args[key]

    def _token_limits(self) -> list[tuple[Any, int]]:
        """(tokenizer, token limit) of each text encoder's tokenizer, first encoder first."""
        pipe = self.pipelines.text_to_image
        found = []
        for name in _TOKENIZERS:
            tokenizer = getattr(pipe, name, None)
            if tokenizer is None:
                continue
            limit = self._profile.token_limits.get(name) or int(tokenizer.model_max_length)
            if limit < _UNBOUNDED_TOKENS:
                found.append((tokenizer, limit))
        return found

    def _prompt_tokens(self, plan: GenerationPlan) -> tuple[bool, int]:
        """Whether a prompt is longer than a text encoder takes (the pipeline then drops the
        rest), and the prompt's length in the first tokenizer's tokens. Runs on the device
        thread: fast tokenizers are not safe to share between threads."""
        truncated = False
        prompt_tokens = 0
        for index, (tokenizer, limit) in enumerate(self._token_limits()):
            counts = [
                len(tokenizer(text, truncation=False, verbose=False)["input_ids"]) if text else 0
                for text in (plan.prompt, plan.negative_prompt)
            ]
            truncated = truncated or max(counts) > limit
            if index == 0:
                prompt_tokens = min(counts[0], limit)
        return truncated, prompt_tokens

    def _release(self, pipe: Any) -> None:
        """After a failed or cancelled run: offload hooks the pipeline skipped, cached memory."""
        if self.settings.cpu_offload != "none":
            try:
                pipe.maybe_free_model_hooks()
            except Exception:
                log.debug("could not reset offload hooks", exc_info=True)
        gc.collect()
        if self._options is not None and self._options.device.type == "cuda":
            torch.cuda.empty_cache()


class _StepState:
    """Per-job step bookkeeping for callback_on_step_end (device thread only)."""

    def __init__(
        self,
        ctx: JobContext,
        plan: GenerationPlan,
        previewer: LatentPreviewer | None,
        started: float,
    ) -> None:
        self.ctx = ctx
        self.plan = plan
        self.previewer = previewer
        self.started = started
        self.steps_done = 0

    def on_step_end(self, pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict:
        self.ctx.check()  # raises out of the pipeline's loop: the device is free at once
        step = index + 1
        self.steps_done = step
        total = int(getattr(pipe, "_num_timesteps", 0) or self.plan.steps)
        every = self.plan.preview_every
        latents = tensors.get("latents")
        if every and self.previewer is not None and latents is not None and step % every == 0:
            elapsed = time.monotonic() - self.started
            eta = elapsed / step * max(0, total - step)
            rgb = self.previewer.rgb(latents, self.plan.height, self.plan.width)
            # Emitted before the progress event; the stream sends one step event with both.
            self.ctx.emit(PreviewFrame(step, total, elapsed, eta, rgb))
        self.ctx.progress(step, total)
        return {}


def _scheduler_steps(pipe: Any) -> int | None:
    # Discrete schedulers (DDIM, PNDM, ...) refuse more steps than their training timesteps,
    # and with "leading" spacing the offset pushes the last one past the table (SD's DDIM
    # fails at 1000 steps with steps_offset 1).
    config = getattr(pipe.scheduler, "config", None)
    steps = getattr(config, "num_train_timesteps", None)
    if not isinstance(steps, int) or steps <= 0:
        return None
    offset = getattr(config, "steps_offset", 0)
    return max(1, steps - (offset if isinstance(offset, int) else 0))


def _guidance_distilled(pipe: Any) -> bool:
    denoiser = getattr(pipe, "transformer", None)
    return bool(getattr(getattr(denoiser, "config", None), "guidance_embeds", False))


def _guidance_embedded(pipe: Any) -> bool:
    """True where the denoiser takes the guidance scale as a conditioning input (guidance-
    distilled transformers, LCM UNets) rather than mixing two passes with it."""
    unet_config = getattr(getattr(pipe, "unet", None), "config", None)
    lcm = getattr(unet_config, "time_cond_proj_dim", None) is not None
    return lcm or _guidance_distilled(pipe)


def _is_allocation_failure(exc: BaseException) -> bool:
    # The runtime recognises CUDA/MPS OOMs; CPU allocation failures read differently.
    return errors.is_out_of_memory(exc) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
    )
