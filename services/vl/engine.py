"""The vl engine: one image-text-to-text model on one device, chat in, text out.

`prepare` (CPU pool: chat template, tokenization, image preprocessing, limit checks) and
`generate` / `generate_batch` (device thread) are split so that the device only ever runs the
model. No gRPC here: inputs and outputs are the plain types of services.vl.chat and
services.runtime.chat.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    PreTrainedModel,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
)

from services.runtime.builtin import resolve_model
from services.runtime.chat.continuous import decode_together
from services.runtime.chat.messages import (
    ChatOutput,
    FinishReason,
    ImagePart,
    Message,
    Role,
    TextPart,
)
from services.runtime.chat.sampling import (
    ModelDefaults,
    Sampling,
    SamplingPlan,
    resolve_sampling,
)
from services.runtime.devices import (
    TorchOptions,
    device_memory_bytes,
    dtype_name,
    maybe_compile,
)
from services.runtime.engine import Engine, EngineInfo
from services.runtime.errors import FieldViolation, InvalidArgument, JobCancelled
from services.runtime.executor import JobContext
from services.runtime.images import MAX_ASPECT_RATIO
from services.runtime.model_source import discover_family
from services.runtime.placement import Placement, input_device
from services.vl import batching
from services.vl.builtin import BUILTINS
from services.vl.chat import ChatInput, ChatLimits
from services.vl.config import VLSettings
from services.vl.decoding import VLDecodeModel
from services.vl.generation import Row, new_row, run_generate
from services.vl.processor import load_processor

log = logging.getLogger("mmserve.vl.engine")

CHAT_KIND = "chat"
# The two families this service names; anything else goes through the Auto class.
_MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
    "qwen2_vl": Qwen2VLForConditionalGeneration,
}
_WARMUP_IMAGE_SIDE = 64


@dataclass(frozen=True)
class PreparedChat:
    """A request ready for the device: its model inputs (CPU tensors, batch of one) and the
    resolved generation settings."""

    inputs: dict[str, torch.Tensor]
    input_tokens: int
    plan: SamplingPlan  # max_new_tokens capped by the context's room too
    # Whether text deltas go out as they decode (StreamChat); in a batch each row has its own.
    stream: bool = False

    @property
    def batch_key(self) -> Hashable:
        return batching.batch_key(self.inputs)


class VLEngine(Engine):
    def __init__(self, settings: VLSettings) -> None:
        self.settings = settings
        self.options: TorchOptions | None = None
        self.model: Any = None
        self.processor: Any = None
        self.tokenizer: Any = None
        self.family = ""
        self.folder: Path | None = None
        self.model_id = ""
        self.context_tokens = 0
        self.eos_ids: frozenset[int] = frozenset()
        self.pad_token_id = 0
        self.resolution_supported = False
        self._model_defaults = ModelDefaults()
        # Whether requests decode together (settings.batching and a cache that merges), known
        # after warm-up.
        self.joinable = False

    # --- loading -------------------------------------------------------------------------

    def load(self) -> None:
        settings = self.settings
        resolved = resolve_model(settings, BUILTINS)
        folder, self.model_id = resolved.folder, resolved.model_id
        self.options = TorchOptions.from_settings(settings, folder)
        family = discover_family(folder)
        if family.library != "transformers":
            raise ValueError(
                f"{folder} holds a diffusers {family.class_name}, not an image-text-to-text model"
            )
        if family.needs_remote_code and not settings.trust_remote_code:
            raise ValueError(
                f"model {family.model_type!r} ships its own code (auto_map); "
                "set trust_remote_code to load it"
            )
        model_cls = _MODEL_CLASSES.get(family.model_type, AutoModelForImageTextToText)
        placement = Placement.from_settings(settings)
        placement.check_compatible(settings.compile)
        model = model_cls.from_pretrained(
            folder,
            dtype=self.options.dtype,
            attn_implementation=self.options.attention,
            trust_remote_code=settings.trust_remote_code,
            **placement.from_pretrained_kwargs(),
        )
        if placement.enabled:  # accelerate placed each layer; inputs go to the first one's
            device = input_device(model, self.options.device)
            self.options = dataclasses.replace(self.options, device=device)
        else:
            model.to(self.options.device)
        model.eval()
        self.model = maybe_compile(model, settings.compile)
        self.processor = load_processor(
            folder, family.model_type, trust_remote_code=settings.trust_remote_code
        )
        self.tokenizer = self.processor.tokenizer
        self.family = family.family
        self.folder = folder
        self.context_tokens = self._context_length()
        self.eos_ids, self.pad_token_id = self._special_ids()
        self.resolution_supported = _has_pixel_bounds(self.processor)
        self._model_defaults = ModelDefaults.from_generation_config(
            getattr(model, "generation_config", None)
        )
        log.info(
            "loaded %s (%s) from %s: context %d tokens, eos %s",
            type(model).__name__,
            self.family,
            folder,
            self.context_tokens,
            sorted(self.eos_ids),
        )

    def _context_length(self) -> int:
        text_config = self.model.config.get_text_config()
        native = getattr(text_config, "max_position_embeddings", None)
        if not native:
            length = getattr(self.tokenizer, "model_max_length", 0)
            native = length if 0 < length < 10_000_000 else 4096
        limit = self.settings.max_context_tokens
        return min(int(native), limit) if limit else int(native)

    def _special_ids(self) -> tuple[frozenset[int], int]:
        config = getattr(self.model, "generation_config", None)
        eos: Any = getattr(config, "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
        if not eos_ids:
            raise ValueError("the model defines no end-of-sequence token (generation_config.json)")
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = getattr(config, "pad_token_id", None)
        return eos_ids, int(pad if pad is not None else min(eos_ids))

    def warmup(self) -> None:
        """One short chat with an image (and a batch of two when batching is on), so the first
        request pays no lazy initialisation or compilation."""
        image = Image.new("RGB", (_WARMUP_IMAGE_SIDE, _WARMUP_IMAGE_SIDE), (127, 127, 127))
        chat = ChatInput(
            messages=(Message(Role.USER, (ImagePart(image), TextPart("Describe the image."))),),
            sampling=Sampling(max_new_tokens=2, seed=0),
        )
        prepared = self.prepare(chat)
        self.generate(prepared, JobContext("warmup", CHAT_KIND))
        if not self.settings.batching:
            return
        text = self.prepare(
            dataclasses.replace(chat, messages=(Message(Role.USER, (TextPart("Hi"),)),))
        )
        try:
            results = decode_together(self.decoder(), [prepared, prepared, text])
        except ValueError as exc:  # a cache that cannot be merged (sliding-window layers)
            log.warning("decoding requests together is off for this model: %s", exc)
            contexts = [JobContext(f"warmup-{i}", CHAT_KIND) for i in range(2)]
            self.generate_batch([prepared, prepared], contexts)
            return
        errors = [result for result in results if isinstance(result, Exception)]
        if errors:
            raise errors[0]
        self.joinable = True

    # --- facts ---------------------------------------------------------------------------

    def info(self) -> EngineInfo:
        assert self.options is not None
        capabilities = ["chat", "chat_streaming", "multi_image"]
        if self.resolution_supported:
            capabilities.append("image_resolution")
        if self.settings.batching:
            capabilities.append("batching")
        return EngineInfo(
            family=self.family,
            model_id=self.model_id,
            architecture=type(self.model).__name__,
            dtype=dtype_name(self.options.dtype),
            device=str(self.options.device),
            revision=self.settings.revision or "",
            attention_implementation=self.options.attention,
            compiled=self.settings.compile,
            capabilities=tuple(capabilities),
        )

    def limits(self) -> ChatLimits:
        settings = self.settings
        return ChatLimits(
            max_context_tokens=self.context_tokens,
            max_new_tokens=settings.max_new_tokens,
            max_messages=settings.max_messages,
            max_images=settings.max_images,
            default_min_pixels=settings.default_min_pixels,
            default_max_pixels=settings.default_max_pixels,
            min_pixels=settings.resolution_min_pixels,
            max_pixels=settings.resolution_max_pixels,
            resolution_supported=self.resolution_supported,
        )

    def memory_bytes(self) -> int | None:
        return device_memory_bytes(self.options.device) if self.options else None

    # --- preparing (CPU pool) --------------------------------------------------------------

    def prepare(self, chat: ChatInput) -> PreparedChat:
        """Renders the chat template, tokenizes, preprocesses the images and resolves limits
        and sampling. Raises InvalidArgument for images the processor cannot take and for a
        prompt that leaves no room in the context."""
        if not chat.messages:
            raise InvalidArgument.for_field("messages", "at least one message is required")
        images = chat.images()
        self._check_images(images)
        prompt = self.processor.apply_chat_template(
            [_template_message(m) for m in chat.messages],
            tokenize=False,
            add_generation_prompt=True,
        )
        kwargs: dict[str, Any] = {}
        if images and self.resolution_supported:
            low, high = self._pixel_bounds(chat)
            kwargs["size"] = {"shortest_edge": low, "longest_edge": high}
        bos = getattr(self.tokenizer, "bos_token", None)
        if bos and prompt.startswith(bos):
            kwargs["add_special_tokens"] = False  # the template wrote it already
        encoded = self.processor(
            text=[prompt],
            images=[image for _, image in images] or None,
            return_tensors="pt",
            **kwargs,
        )
        inputs = {key: value for key, value in encoded.items() if isinstance(value, torch.Tensor)}
        input_tokens = int(inputs["input_ids"].shape[1])
        room = self.context_tokens - input_tokens
        if room < 1:
            why = (
                f"the prompt is {input_tokens} tokens (images included) but the model's context "
                f"is {self.context_tokens} tokens, so no token is left for the answer; send "
                "fewer or smaller images or less text"
            )
            raise InvalidArgument(why, [FieldViolation("messages", why)])
        plan = resolve_sampling(
            chat.sampling, self._model_defaults, self.settings.sampling_defaults()
        )
        return PreparedChat(
            inputs=inputs,
            input_tokens=input_tokens,
            plan=dataclasses.replace(plan, max_new_tokens=min(plan.max_new_tokens, room)),
        )

    def _pixel_bounds(self, chat: ChatInput) -> tuple[int, int]:
        low = chat.resolution.min_pixels or self.settings.default_min_pixels
        high = chat.resolution.max_pixels or self.settings.default_max_pixels
        return low, high

    def _check_images(self, images: list[tuple[str, Image.Image]]) -> None:
        """Qwen's smart_resize refuses images more elongated than the runtime's shared limit;
        processors without pixel bounds take any shape, so only these models refuse them."""
        if not self.resolution_supported:
            return
        violations = [
            FieldViolation(
                field,
                f"image is {image.width}x{image.height}; this model takes images at most "
                f"{MAX_ASPECT_RATIO} times longer than wide",
            )
            for field, image in images
            if max(image.size) > MAX_ASPECT_RATIO * min(image.size)
        ]
        if violations:
            raise InvalidArgument(violations[0].description, violations)

    # --- generating (device thread) --------------------------------------------------------

    def generate(self, prepared: PreparedChat, ctx: JobContext) -> ChatOutput:
        """One request; with `prepared.stream`, text deltas go out through ctx.emit as they
        complete. A cancel (or deadline) stops it at the next token and raises the cancel
        error."""
        ctx.check()
        row = self._row(prepared, ctx)
        [output] = run_generate(
            self.model,
            self.to_device(prepared.inputs),
            [row],
            eos_ids=self.eos_ids,
            pad_token_id=self.pad_token_id,
        )
        if output.finish_reason is FinishReason.CANCELLED:
            ctx.check()
        return output

    def generate_batch(
        self, batch: list[PreparedChat], contexts: list[JobContext]
    ) -> list[ChatOutput | Exception]:
        """Queued requests in one left-padded generate call (the executor's batch operation);
        streaming rows emit their own deltas. Requests that cannot be stacked run one after
        another."""
        stacked = (
            batching.collate([p.inputs for p in batch], self.pad_token_id)
            if len(batch) > 1
            else batch[0].inputs
        )
        if stacked is None:
            return [self._one_of_batch(p, ctx) for p, ctx in zip(batch, contexts, strict=True)]
        rows = [self._row(p, ctx) for p, ctx in zip(batch, contexts, strict=True)]
        outputs = run_generate(
            self.model,
            self.to_device(stacked),
            rows,
            eos_ids=self.eos_ids,
            pad_token_id=self.pad_token_id,
        )
        return [
            _cancel_error(ctx) if out.finish_reason is FinishReason.CANCELLED else out
            for out, ctx in zip(outputs, contexts, strict=True)
        ]

    def decoder(self) -> VLDecodeModel:
        """This model for the iteration-level decode loop (services.runtime.chat.continuous)."""
        return VLDecodeModel(self)

    def _one_of_batch(self, prepared: PreparedChat, ctx: JobContext) -> ChatOutput | Exception:
        try:
            return self.generate(prepared, ctx)
        except Exception as exc:  # one row's failure must not fail its neighbours
            return exc

    def _row(self, prepared: PreparedChat, ctx: JobContext) -> Row:
        return new_row(
            ctx,
            prepared.plan,
            tokenizer=self.tokenizer,
            input_tokens=prepared.input_tokens,
            stream=prepared.stream,
        )

    def to_device(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        assert self.options is not None
        device, dtype = self.options.device, self.options.dtype
        return {
            key: value.to(device, dtype=dtype) if value.is_floating_point() else value.to(device)
            for key, value in inputs.items()
        }


def _template_message(message: Message) -> dict[str, Any]:
    """The content-list message shape transformers chat templates take."""
    return {
        "role": message.role.value,
        "content": [
            {"type": "text", "text": part.text} if isinstance(part, TextPart) else {"type": "image"}
            for part in message.content
        ],
    }


def _has_pixel_bounds(processor: Any) -> bool:
    """True for image processors resized by total pixels (Qwen2-VL style min/max_pixels)."""
    image_processor = getattr(processor, "image_processor", None)
    valid = getattr(image_processor, "valid_kwargs", None)
    keys = getattr(valid, "__annotations__", {})
    return "min_pixels" in keys and "max_pixels" in keys


def _cancel_error(ctx: JobContext) -> Exception:
    return ctx.cancel.error or JobCancelled("cancelled")
