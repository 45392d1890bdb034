"""What the Qwen-Omni families (Qwen2.5-Omni, Qwen3-Omni) share: a thinker that reads text, images
and audio and writes the text (streamed token by token), and a talker plus vocoder that turn the
thinker's states into speech with one of the checkpoint's built-in speakers.

The subclasses name their classes and ids; everything else is here:

- the processor, assembled from its parts because the stock one needs torchvision (for its video
  processor) and that is not installed: the class check is skipped for the missing video processor;
- the prompt (the chat template renders image and audio placeholders; the processor expands them);
- KV reuse across the turns of a live session. The whole conversation is rendered and processed
  each turn (cheap: tokenizing, mel features, image patches), but the thinker computes only the
  tokens after the prefix it has already seen. That needs three things transformers does not do
  by itself when `generate()` starts from a filled cache:
  1. position ids: the thinker uses multimodal RoPE (images get 2-D positions, so a token's
     position is not its index). generate() would continue from the `rope_deltas` of the last
     call on the model, whatever conversation that was. We compute the positions of the whole
     conversation with the thinker's own `get_rope_index` (the same call generate() makes for a
     fresh prompt) and pass them; generate() slices off the cached part;
  2. media: only images and audio clips after the cached prefix are encoded again (the encoders
     work per item, so earlier items' features are already in the cache). The cached prefix is
     cut back to the start of the first media item that differs from last turn's (same
     placeholder span and same pixels / samples) or that the prefix would split;
  3. speech: the talker reads the thinker's states of the *whole* conversation (the embeddings and
     one hidden layer per token), which generate() returns only for the tokens it computes. A
     session keeps those two layers per token and puts them back in front of the new ones before
     the model's own talker code runs, so the talker sees what it would see without reuse.
"""

from __future__ import annotations

import hashlib
import logging
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import StoppingCriteria

from services.omni.families.base import (
    ConversationState,
    Family,
    FamilyTraits,
    Generated,
    SpeechTarget,
)
from services.omni.families.chat_llm import (
    cap_new_tokens,
    crop_cache,
    eos_ids,
    shared_prefix,
)
from services.omni.families.streaming_vocoder import TalkerSpeechStream
from services.omni.generation import (
    GenerationHooks,
    HookStopping,
    TextDeltaStreamer,
    sampling_kwargs,
)
from services.omni.turns import AudioPart
from services.runtime.chat.messages import ImagePart, Message, Role, TextPart
from services.runtime.chat.sampling import ModelDefaults, SamplingPlan
from services.runtime.devices import TorchOptions, device_memory_bytes, maybe_compile

log = logging.getLogger("mmserve.omni")

SPEECH_SAMPLE_RATE = 24000  # both vocoders write 24 kHz


def omni_processor_class(base: type) -> type:
    """`base` (a Qwen-Omni processor class) accepting a missing video processor."""

    class Processor(base):  # type: ignore[misc, valid-type]
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    Processor.__name__ = Processor.__qualname__ = f"{base.__name__}WithoutVideo"
    return Processor


def load_omni_processor(folder: Path, processor_class: type, default_template: str) -> Any:
    """The processor of the model in `folder`, built from its tokenizer, image processor and
    feature extractor (no video processor: that needs torchvision)."""
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil, WhisperFeatureExtractor

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    template_file = folder / "chat_template.jinja"
    template = (
        template_file.read_text(encoding="utf-8")
        if template_file.is_file()
        else tokenizer.chat_template or default_template
    )
    return processor_class(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(str(folder)),
        feature_extractor=WhisperFeatureExtractor.from_pretrained(str(folder)),
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=template,
    )


class CancelOnly(StoppingCriteria):
    """Stops the talker when the job is interrupted (it has no text to watch), or at once when
    the thinker's reply already was (its speech would be thrown away)."""

    def __init__(self, hooks: GenerationHooks, thinker: HookStopping) -> None:
        self._hooks = hooks
        self._thinker = thinker
        # Kept: should_stop may report an event once (a session's barge-in), and the speech
        # streamed while the talker runs must stop with it.
        self.fired = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> Any:
        if not self.fired:
            self.fired = self._thinker.interrupted or self._hooks.should_stop()
        stop = self.fired
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


@dataclass(frozen=True)
class MediaSpan:
    """One image or audio clip of a prompt: where its placeholder tokens are, and what it is."""

    kind: str  # "image" or "audio"
    start: int  # first placeholder token
    end: int  # one past the last
    digest: str  # of the pixels or samples


@dataclass
class ThinkerMemory:
    """What a live session keeps of the thinker between turns (in ConversationState.cache)."""

    kv: Any  # the KV cache of ConversationState.ids[:kv.get_seq_length()]
    media: tuple[MediaSpan, ...]  # the media of the prompt that filled it
    # The thinker states the talker reads, per computed token (None: turns without speech).
    talker_states: dict[int, torch.Tensor] | None = None

    @property
    def states_length(self) -> int:
        if not self.talker_states:
            return 0
        return int(next(iter(self.talker_states.values())).shape[1])


@dataclass
class _Plan:
    """How this turn feeds the thinker: what it reuses and what it computes."""

    memory: ThinkerMemory | None  # reused (already cropped to `keep`)
    keep: int  # prompt tokens taken from the cache
    media: tuple[MediaSpan, ...]


class QwenOmniBase(Family):
    """A Qwen-Omni model: thinker (text), talker + vocoder (speech). Subclasses give the classes,
    the speakers and where the talker reads the thinker."""

    family_name: str  # traits.family
    model_class_name: str  # transformers class
    display_name: str  # for messages
    default_template: str  # chat template when the folder has none
    processor_class: type

    def __init__(
        self,
        folder: Path,
        options: TorchOptions,
        *,
        max_context_tokens: int = 0,
        talker_max_new_tokens: int = 4096,
        speech_chunk_codes: int = 0,
    ) -> None:
        self._folder = folder
        self._options = options
        self._max_context = max_context_tokens
        self._talker_max = talker_max_new_tokens
        self._speech_chunk = speech_chunk_codes  # 0: the vocoder runs once, after the talker

    # ---- what subclasses say ------------------------------------------------------------

    @abstractmethod
    def speakers(self) -> dict[str, Any]:
        """Speaker name (as listed) -> what the model's generate() takes as `speaker`."""

    @abstractmethod
    def talker_layers(self) -> tuple[int, ...]:
        """Indices into the thinker's hidden_states (0: embeddings) that the talker reads."""

    def speech_system_prompt(self) -> str:
        """A system prompt the model needs for speech when the conversation has none."""
        return ""

    def prepare_loaded(self) -> None:
        """Fixes applied to the loaded model (before the traits are read)."""

    def stored_talker_state(self, layer: int, states: torch.Tensor, ids: torch.Tensor) -> Any:
        """A computed layer as a session keeps it for later turns' talker input."""
        return states

    def speech_kwargs(self) -> dict[str, Any]:
        """Extra arguments to the model's generate() when it speaks."""
        return {}

    @abstractmethod
    def speech_stream(
        self, speaker: Any, emit: Callable[[np.ndarray], None], halted: Callable[[], bool]
    ) -> TalkerSpeechStream:
        """What vocodes this model's talker codes while it generates (`speaker` as generate()
        takes it)."""

    # ---- loading ------------------------------------------------------------------------

    def load(self) -> None:
        import transformers

        self.processor = load_omni_processor(
            self._folder, self.processor_class, self.default_template
        )
        model_class = getattr(transformers, self.model_class_name)
        model = model_class.from_pretrained(
            str(self._folder),
            dtype=self._options.dtype,
            attn_implementation=self._options.attention,
        )
        self.model = model.to(self._options.device).eval()
        self.prepare_loaded()
        self.model.thinker = maybe_compile(
            self.model.thinker, self._options.compile, self._options.compile_mode
        )
        text_config = self.model.config.thinker_config.text_config
        context = int(getattr(text_config, "max_position_embeddings", 0) or 0)
        if self._max_context:
            context = min(context, self._max_context) if context else self._max_context
        tokenizer = self.processor.tokenizer
        self._eos = eos_ids(self.model.generation_config, tokenizer)
        if not self._eos - {None}:
            self._eos = frozenset({tokenizer.convert_tokens_to_ids("<|im_end|>")})
        self._eos = frozenset(token for token in self._eos if token is not None)
        self._media_tokens = {
            "image": int(tokenizer.convert_tokens_to_ids(self.processor.image_token)),
            "audio": int(tokenizer.convert_tokens_to_ids(self.processor.audio_token)),
        }
        speaks = bool(self.model.has_talker)
        self._speakers = self.speakers() if speaks else {}
        self.traits = FamilyTraits(
            family=self.family_name,
            architecture=type(self.model).__name__,
            audio_input=True,
            image_input=True,
            speech_output=speaks,
            speech_sample_rate=SPEECH_SAMPLE_RATE if speaks else 0,
            speakers=tuple(self._speakers),
            max_context_tokens=context,
            sampling_defaults=ModelDefaults.from_generation_config(self.model.generation_config),
        )

    def memory_bytes(self) -> int | None:
        return device_memory_bytes(self._options.device)

    # ---- prompt ---------------------------------------------------------------------------

    def prompt_inputs(
        self, messages: tuple[Message, ...], speech: bool
    ) -> tuple[dict[str, Any], tuple[MediaSpan, ...]]:
        """The processor's tensors for the whole conversation (on the device) and its media."""
        conversation: list[dict[str, Any]] = []
        images: list[Any] = []
        audios: list[Any] = []
        digests: dict[str, list[str]] = {"image": [], "audio": []}
        system = self.speech_system_prompt() if speech else ""
        if system and (not messages or messages[0].role is not Role.SYSTEM):
            conversation.append({"role": "system", "content": system})
        for message in messages:
            content: list[dict[str, Any]] = []
            for part in message.content:
                if isinstance(part, TextPart):
                    content.append({"type": "text", "text": part.text})
                elif isinstance(part, ImagePart):
                    content.append({"type": "image"})
                    images.append(part.image)
                    digests["image"].append(_image_digest(part.image))
                elif isinstance(part, AudioPart):
                    content.append({"type": "audio"})
                    audios.append(part.samples)
                    digests["audio"].append(_audio_digest(part.samples))
            conversation.append({"role": message.role.value, "content": content})
        prompt = self.processor.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False
        )
        batch = self.processor(
            text=[prompt],
            images=images or None,
            audio=audios or None,
            return_tensors="pt",
            padding=True,
        )
        inputs: dict[str, Any] = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self._options.device)
                if value.is_floating_point():
                    value = value.to(self._options.dtype)
            inputs[key] = value
        ids = inputs["input_ids"][0].tolist()
        return inputs, self._media_spans(ids, digests)

    def _media_spans(self, ids: list[int], digests: dict[str, list[str]]) -> tuple[MediaSpan, ...]:
        """Each run of an image or audio placeholder token, in order, with its item's digest."""
        spans: list[MediaSpan] = []
        seen = {"image": 0, "audio": 0}
        kinds = {token: kind for kind, token in self._media_tokens.items()}
        index = 0
        while index < len(ids):
            kind = kinds.get(ids[index])
            if kind is None:
                index += 1
                continue
            end = index
            while end < len(ids) and ids[end] == ids[index]:
                end += 1
            number = seen[kind]
            seen[kind] += 1
            digest = digests[kind][number] if number < len(digests[kind]) else ""
            spans.append(MediaSpan(kind, index, end, digest))
            index = end
        return tuple(spans)

    # ---- KV reuse ------------------------------------------------------------------------

    def _plan(
        self,
        state: ConversationState | None,
        ids: list[int],
        media: tuple[MediaSpan, ...],
        speech: bool,
    ) -> _Plan:
        memory = state.cache if state is not None else None
        if not isinstance(memory, ThinkerMemory):
            return _Plan(None, 0, media)
        assert state is not None
        cached = int(memory.kv.get_seq_length())
        keep = min(shared_prefix(state.ids, ids), len(ids) - 1, cached)
        if speech:
            keep = min(keep, memory.states_length)
        for number, span in enumerate(media):
            if span.start >= keep:
                break
            before = memory.media[number] if number < len(memory.media) else None
            if span != before or span.end > keep:
                keep = span.start  # this item must be encoded again, with all after it
                break
        if keep <= 0:
            state.cache = None
            return _Plan(None, 0, media)
        crop_cache(memory.kv, keep)
        if memory.talker_states is not None:
            memory.talker_states = {
                layer: states[:, :keep] for layer, states in memory.talker_states.items()
            }
        return _Plan(memory, keep, media)

    def _thinker_feed(self, inputs: dict[str, Any], plan: _Plan) -> dict[str, Any]:
        """generate() inputs for the thinker: the whole conversation's ids, the media not in the
        reused prefix, and with a reused cache the cache and the position ids."""
        feed: dict[str, Any] = {
            "input_ids": inputs["input_ids"],
            "attention_mask": inputs["attention_mask"],
        }
        cached = [span for span in plan.media if span.end <= plan.keep]
        images = sum(1 for span in cached if span.kind == "image")
        audios = sum(1 for span in cached if span.kind == "audio")
        grids = inputs.get("image_grid_thw")
        if grids is not None and images < grids.shape[0]:
            skip = int(grids[:images].prod(-1).sum()) if images else 0
            feed["pixel_values"] = inputs["pixel_values"][skip:]
            feed["image_grid_thw"] = grids[images:]
        features = inputs.get("input_features")
        if features is not None and audios < features.shape[0]:
            feed["input_features"] = features[audios:]
            feed["feature_attention_mask"] = inputs["feature_attention_mask"][audios:]
        if plan.memory is not None:
            feed["past_key_values"] = plan.memory.kv
            feed["position_ids"] = self._position_ids(inputs)
        return feed

    def _position_ids(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The thinker's position ids of the whole prompt, as generate() builds them for a fresh
        prompt: the text positions, then the three multimodal RoPE rows."""
        mask = inputs["attention_mask"]
        feature_mask = inputs.get("feature_attention_mask")
        rope, _ = self.model.thinker.get_rope_index(
            inputs["input_ids"],
            inputs.get("image_grid_thw"),
            None,
            mask,
            False,
            feature_mask.sum(-1) if feature_mask is not None else None,
            None,
        )
        text = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        return torch.cat([text[None, ...], rope], dim=0)

    # ---- generation ---------------------------------------------------------------------

    def generate(
        self,
        messages: tuple[Message, ...],
        sampling: SamplingPlan,
        hooks: GenerationHooks,
        *,
        speech: SpeechTarget | None = None,
        state: ConversationState | None = None,
    ) -> Generated:
        if speech is not None and speech.reference is not None:
            raise ValueError(f"{self.display_name} cannot clone voices (the engine checks first)")
        inputs, media = self.prompt_inputs(messages, speech is not None)
        ids = inputs["input_ids"]
        prompt_tokens = int(ids.shape[1])
        context = self.traits.max_context_tokens
        max_new = cap_new_tokens(prompt_tokens, sampling.max_new_tokens, context)
        hooks.prompt(prompt_tokens)
        plan = self._plan(state, ids[0].tolist(), media, speech is not None)
        tokenizer = self.processor.tokenizer
        streamer = TextDeltaStreamer(tokenizer, hooks.on_text, sampling.stop, self._eos)
        stopping = HookStopping(streamer, hooks.should_stop)
        thinker_kwargs = sampling_kwargs(sampling)
        thinker_kwargs.update(
            max_new_tokens=max_new,
            streamer=streamer,
            stopping_criteria=[stopping],
            eos_token_id=sorted(self._eos),
            pad_token_id=tokenizer.pad_token_id,
        )
        feed = self._thinker_feed(inputs, plan)
        waveform = None
        streamed = False
        interrupted = False
        with torch.inference_mode():
            if speech is None:
                result = self.model.thinker.generate(
                    **feed, **thinker_kwargs, return_dict_in_generate=state is not None
                )
                if state is not None:
                    self._remember(state, result, plan, None)
                interrupted = stopping.interrupted
            else:
                stop = CancelOnly(hooks, stopping)
                stream = None
                if hooks.on_audio is not None and self._speech_chunk > 0:
                    stream = self.speech_stream(
                        self._speaker_value(speech), hooks.on_audio, lambda: stop.fired
                    )
                waveform = self._speak(
                    inputs, feed, plan, thinker_kwargs, speech, stop, state, stream
                )
                streamed = stream is not None
                if stream is not None:
                    log.info(
                        "%s: speech streamed while the talker ran, %d pieces, %d samples",
                        self.display_name,
                        stream.pieces,
                        stream.samples,
                    )
                # Stopped in the thinker or in the talker: the reply's speech ends here.
                interrupted = stopping.interrupted or stop.fired
                if interrupted or streamed:
                    waveform = None
        log.debug(
            "%s: %d prompt tokens, %d from the session's cache",
            self.display_name,
            prompt_tokens,
            plan.keep,
        )
        return Generated(
            text=streamer.sent,
            finish=streamer.finish_reason(max_new, interrupted),
            input_tokens=prompt_tokens,
            output_tokens=streamer.output_tokens,
            waveform=waveform,
            streamed=streamed,
        )

    def _speaker_value(self, speech: SpeechTarget) -> Any:
        speaker = self._speakers.get(speech.speaker) if speech.speaker else None
        return speaker if speaker is not None else next(iter(self._speakers.values()))

    def _speak(
        self,
        inputs: dict[str, Any],
        feed: dict[str, Any],
        plan: _Plan,
        thinker_kwargs: dict[str, Any],
        speech: SpeechTarget,
        talker_stop: StoppingCriteria,
        state: ConversationState | None,
        stream: TalkerSpeechStream | None = None,
    ) -> np.ndarray:
        """The model's own generate() (thinker, then talker and vocoder), with the thinker call
        fed and its result completed for the reused prefix; with a stream, the talker's codes
        are vocoded as they come (the returned waveform is then empty)."""
        kwargs: dict[str, Any] = {
            "input_ids": feed.pop("input_ids"),
            "attention_mask": feed.pop("attention_mask"),
        }
        # Prefixed arguments go to one sub-model only: the thinker encodes only the new media,
        # the talker's own RoPE needs all of the conversation's.
        kwargs.update({f"thinker_{key}": value for key, value in feed.items()})
        kwargs.update({f"thinker_{key}": value for key, value in thinker_kwargs.items()})
        if inputs.get("image_grid_thw") is not None:
            kwargs["talker_image_grid_thw"] = inputs["image_grid_thw"]
        if inputs.get("feature_attention_mask") is not None:
            kwargs["talker_audio_feature_lengths"] = inputs["feature_attention_mask"].sum(-1)
        criteria = [talker_stop]
        tapped: Any = nullcontext()
        if stream is not None:
            # After the stop criterion, so a step that stops the reply emits nothing.
            criteria += stream.talker_criteria()
            tapped = stream.attached()
        captured: list[Any] = []
        with self._thinker_result_hook(plan, captured), tapped:
            out = self.model.generate(
                **kwargs,
                speaker=self._speaker_value(speech),
                talker_max_new_tokens=self._talker_max,
                talker_stopping_criteria=criteria,
                **self.speech_kwargs(),
            )
        wav = out[1]
        if state is not None and captured:
            self._remember(state, captured[0], plan, self.talker_layers())
        return wav.reshape(-1).float().cpu().numpy()

    @contextmanager
    def _thinker_result_hook(self, plan: _Plan, captured: list[Any]) -> Iterator[None]:
        """For the duration of one model.generate(): the thinker's result, captured, and with a
        reused prefix its first (prompt) hidden states extended by the kept states of that
        prefix, so the model's talker code sees the whole conversation's states."""
        thinker = self.model.thinker
        original: Callable[..., Any] = thinker.generate
        prefix = plan.memory.talker_states if plan.memory is not None else None

        def generate(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            if prefix:
                first = list(result.hidden_states[0])
                for layer, states in prefix.items():
                    first[layer] = torch.cat([states.to(first[layer].dtype), first[layer]], dim=1)
                result.hidden_states = (tuple(first), *result.hidden_states[1:])
            captured.append(result)
            return result

        thinker.generate = generate
        try:
            yield
        finally:
            del thinker.generate

    def _remember(
        self,
        state: ConversationState,
        result: Any,
        plan: _Plan,
        layers: tuple[int, ...] | None,
    ) -> None:
        """Keeps this turn's cache (and the talker's states) for the next turn."""
        sequences = result.sequences
        state.ids = sequences[0].tolist()
        talker_states = None
        if layers is not None and result.hidden_states:
            talker_states = {}
            for layer in layers:
                parts = [step[layer] for step in result.hidden_states]
                full = torch.cat(parts, dim=1)
                ids = sequences[:, : full.shape[1]]
                talker_states[layer] = self.stored_talker_state(layer, full, ids)
        state.cache = ThinkerMemory(result.past_key_values, plan.media, talker_states)


def _image_digest(image: Any) -> str:
    digest = hashlib.sha1(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def _audio_digest(samples: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(samples).tobytes()).hexdigest()
