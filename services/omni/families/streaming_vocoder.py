"""Native Qwen-Omni speech while the talker still writes its codec codes.

The model's own `generate()` runs as usual (thinker, then talker, then vocoder); for the length of
one call a stream taps the talker's codes as they are made and vocodes every `chunk_codes` new
codes at once, handing the waveform to `emit`. The vocoder call at the end of `generate()` is
taken over too: it receives exactly the codes (and speaker conditioning) the whole-reply path
would vocode, and either vocodes all of them the model's own way (nothing was streamed yet, so
the result is the whole path's, sample for sample) or only the part not yet emitted.

- Qwen3-Omni's code2wav is causal: a chunk decoded with left context is what `chunked_decode`
  gives. Chunks are cut where the whole path cuts them too (every 300 codes, 25 of context), so
  with `chunk_codes` >= the reply's codes, or = 300, the samples are the whole path's; between
  those cuts pieces join without a gap, so the length is always the whole path's.
- Qwen2.5-Omni's token2wav is a DiT (block attention, a 10-step ODE from random noise over the
  whole code sequence) plus BigVGAN. It is streamed by windows: left context, the new codes and
  look-ahead, with the noise of each mel frame fixed by its position, and BigVGAN over the new
  mel with enough mel on both sides that its seams are exact. Only the DiT windows differ from
  the whole path (approximate, like Qwen's own streaming); the length is always the whole
  path's, and when nothing was streamed before the talker ended the samples are the whole path's.

Everything runs on the device thread inside `generate()`: the talker waits while a chunk is
vocoded, which is what gets the first audio out before the talker has finished.
"""

from __future__ import annotations

import functools
import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from transformers import StoppingCriteria

Emit = Callable[[np.ndarray], None]

# transformers' Qwen3-Omni generate() decodes with code2wav.chunked_decode(codes, 300, 25).
CODE2WAV_CHUNK = 300
CODE2WAV_LEFT_CONTEXT = 25


class TalkerSpeechStream(ABC):
    """Vocodes one reply's talker codes as they come; `emit` gets float waveform pieces at the
    model's rate. Nothing is emitted once `halted()` is true (the reply was interrupted)."""

    def __init__(self, chunk_codes: int, emit: Emit, halted: Callable[[], bool]) -> None:
        if chunk_codes < 1:
            raise ValueError("chunk_codes must be >= 1")
        self._chunk = chunk_codes
        self._emit_piece = emit
        self._halted = halted
        self.pieces = 0  # waveform pieces emitted
        self.samples = 0  # their total length

    def talker_criteria(self) -> list[StoppingCriteria]:
        """Extra talker stopping criteria (they never stop it; they watch its ids)."""
        return []

    @abstractmethod
    def attached(self) -> Any:
        """A context manager: the model's talker and vocoder tapped for one generate() call."""

    def _emit(self, waveform: torch.Tensor) -> None:
        samples = waveform.detach().reshape(-1).float().cpu().numpy()
        if samples.size:
            self.pieces += 1
            self.samples += int(samples.size)
            self._emit_piece(samples)


class Code2WavStream(TalkerSpeechStream):
    """Qwen3-Omni: codec frames (all codebooks) are read where the talker's forward receives
    them, the same frames transformers stacks into `talker_codes`."""

    def __init__(
        self,
        model: Any,
        chunk_codes: int,
        emit: Emit,
        halted: Callable[[], bool],
        *,
        segment: int = CODE2WAV_CHUNK,
        left_context: int = CODE2WAV_LEFT_CONTEXT,
    ) -> None:
        super().__init__(chunk_codes, emit, halted)
        self._model = model
        self._code2wav = model.code2wav
        self._segment = segment
        self._left = left_context
        self._upsample = int(self._code2wav.total_upsample)
        self._frames: list[torch.Tensor] = []  # [num_quantizers] per frame
        self._done = 0  # frames whose audio is out

    @contextmanager
    def attached(self) -> Iterator[None]:
        talker, code2wav = self._model.talker, self._code2wav
        forward: Callable[..., Any] = talker.forward
        decode: Callable[..., Any] = code2wav.chunked_decode

        # functools.wraps: generate() validates its arguments against forward's signature.
        @functools.wraps(forward)
        def tapped_forward(*args: Any, **kwargs: Any) -> Any:
            codes = kwargs.get("residual_codes")
            embeds = kwargs.get("inputs_embeds")
            # The prefill has no codes; every later step carries the previous step's frame.
            if codes is not None and (embeds is None or embeds.shape[1] == 1):
                self.push(codes[0])
            return forward(*args, **kwargs)

        def final_decode(codes: torch.Tensor, chunk_size: int = 300, left_context_size: int = 25):
            return self.finish(codes, lambda: decode(codes, chunk_size, left_context_size))

        talker.forward = tapped_forward
        code2wav.chunked_decode = final_decode
        try:
            yield
        finally:
            del talker.forward
            del code2wav.chunked_decode

    def push(self, frame: torch.Tensor) -> None:
        """One more codec frame ([num_quantizers] ids) from the talker."""
        self._frames.append(frame.detach())
        self._advance(final=False)

    def finish(self, codes: torch.Tensor, whole: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The end of generate(): `codes` ([1, num_quantizers, T]) is what the whole path
        decodes. Returns what generate() then returns as the waveform (empty: all emitted)."""
        empty = torch.zeros(1, 1, 0, device=codes.device)
        if self._halted():
            return empty
        if self._done == 0:
            self._emit(whole())  # nothing streamed yet: the model's own decode, unchanged
            return empty
        self._frames = list(codes[0].unbind(-1))
        self._advance(final=True)
        return empty

    def _advance(self, *, final: bool) -> None:
        total = len(self._frames)
        while self._done < total and not self._halted():
            target = total if final else self._done + self._chunk
            if target > total:
                return
            # Never across a point where the whole path starts a new chunk.
            end = min(target, (self._done // self._segment + 1) * self._segment)
            self._decode(self._done, end)
            self._done = end

    @torch.inference_mode()
    def _decode(self, start: int, end: int) -> None:
        context = min(self._left, start)
        window = torch.stack(self._frames[start - context : end], dim=-1).unsqueeze(0)
        wav = self._code2wav(window).reshape(-1)
        # A decode comes out `lost` samples short at its end (causal transposed convolutions).
        # Where the whole path restarts (a segment start) those samples are missing from it as
        # well; elsewhere this piece begins where the previous one ended, so none are skipped.
        lost = (end - start + context) * self._upsample - wav.shape[-1]
        first = context * self._upsample
        if start % self._segment:
            first -= lost
        self._emit(wav[first:])


class _CodeTap(StoppingCriteria):
    """Hands each new talker id to the stream; never stops generation."""

    def __init__(self, on_id: Callable[[int], None]) -> None:
        self._on_id = on_id

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> Any:
        self._on_id(int(input_ids[0, -1]))
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@functools.cache  # the model class's generate/forward: read once, not per reply
def _defaults(function: Callable[..., Any]) -> dict[str, Any]:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def bigvgan_reach(config: Any) -> int:
    """Mel frames on each side that can change one BigVGAN output sample (an upper bound,
    from the layer sizes): with that much mel around a span its samples are exact."""
    reach = 3.0  # conv_pre, kernel 7
    rate = 1
    # Each anti-aliased activation: a 12-tap upsampling and a 12-tap downsampling filter at
    # twice the rate, so 6 samples either side at most.
    activation = 6
    for stride, kernel in zip(config.upsample_rates, config.upsample_kernel_sizes, strict=True):
        rate *= stride
        reach += math.ceil(kernel / stride) / 2 + 1
        block = 0
        for size, dilations in zip(
            config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True
        ):
            spread = sum((size - 1) * d // 2 + (size - 1) // 2 + 2 * activation for d in dilations)
            block = max(block, spread)
        reach += block / rate
    reach += 2 * activation / rate + 3 / rate  # activation_post and conv_post
    return math.ceil(reach)


class Token2WavStream(TalkerSpeechStream):
    """Qwen2.5-Omni: codes are read from the talker's ids (a stopping criterion sees each one),
    stopping at the first codec end token as the whole path does."""

    def __init__(
        self,
        model: Any,
        speaker: Any,
        chunk_codes: int,
        emit: Emit,
        halted: Callable[[], bool],
    ) -> None:
        super().__init__(chunk_codes, emit, halted)
        self._model = model
        token2wav = model.token2wav
        self._dit = token2wav.code2wav_dit_model
        self._vocoder = token2wav.code2wav_bigvgan_model
        dit = self._dit.config
        self._repeats = int(dit.repeats)
        self._block = int(dit.block_size)  # mel frames per attention block
        self._mel_dim = int(dit.mel_dim)
        # A window starts on a block boundary so its blocks are the whole run's blocks.
        self._align = self._block // math.gcd(self._block, self._repeats)  # in codes
        self._left = self._align * max(2, len(dit.look_backward_layers))
        self._right = self._align * max(1, len(dit.look_ahead_layers))
        self._reach = bigvgan_reach(self._vocoder.config)
        self._frame_samples = int(np.prod(self._vocoder.config.upsample_rates))
        self._eos = frozenset(_defaults(type(model).generate)["talker_eos_token_id"])
        ode = _defaults(type(token2wav).forward)
        self._steps = int(ode["num_steps"])
        self._guidance = float(ode["guidance_scale"])
        self._sway = ode["sway_coefficient"]
        self._device = next(token2wav.parameters()).device
        # What generate() gives token2wav: the speaker's condition and reference mel, float32.
        self._condition = speaker["cond"].to(self._device).float().expand(1, -1)
        self._reference_mel = speaker["ref_mel"].to(self._device).float().expand(1, -1, -1)
        # Noise per mel block from a generator of its own, so the talker's sampling (global
        # generator) is untouched and a frame's noise does not depend on the chunk size.
        self._generator = torch.Generator().manual_seed(torch.initial_seed())
        self._noise: list[torch.Tensor] = []
        self._codes: list[int] = []
        self._ended = False  # the talker wrote its end token
        self._done = 0  # codes whose audio is out
        self._mel_tail = torch.zeros(1, self._mel_dim, 0, device=self._device)

    def talker_criteria(self) -> list[StoppingCriteria]:
        return [_CodeTap(self.push)]

    @contextmanager
    def attached(self) -> Iterator[None]:
        token2wav = self._model.token2wav
        if token2wav.dtype != torch.float:
            token2wav.float()  # what generate() does before vocoding; windows come earlier
        forward: Callable[..., Any] = token2wav.forward

        @functools.wraps(forward)
        def final_forward(code: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            return self.finish(code, lambda: forward(code, *args, **kwargs))

        token2wav.forward = final_forward
        try:
            yield
        finally:
            del token2wav.forward

    def push(self, token: int) -> None:
        """One more talker id."""
        if self._ended:
            return
        if token in self._eos:
            self._ended = True
            return
        self._codes.append(token)
        self._advance(final=False)

    def finish(self, code: torch.Tensor, whole: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The end of generate(): `code` ([1, T]) is what the whole path vocodes."""
        empty = torch.zeros(0, device=code.device)
        if self._halted():
            return empty
        if self._done == 0:
            self._emit(whole())  # nothing streamed yet: the model's own token2wav, unchanged
            return empty
        self._codes = code[0].tolist()
        self._advance(final=True)
        return empty

    def _advance(self, *, final: bool) -> None:
        total = len(self._codes)
        while self._done < total and not self._halted():
            if final:
                new_end = end = total
            else:
                new_end = self._done + self._chunk
                end = new_end + self._right
                if end > total:
                    return
            start = max(0, self._done - self._left) // self._align * self._align
            self._window(start, new_end, end)
            self._done = new_end

    @torch.inference_mode()
    def _window(self, start: int, new_end: int, end: int) -> None:
        """Mel for codes [start, end), of which [done, new_end) is new; vocodes the new part."""
        repeats = self._repeats
        codes = torch.tensor([self._codes[start:end]], dtype=torch.long, device=self._device)
        mel = self._dit_mel(codes, self._noise_frames(start * repeats, end * repeats))
        new = mel[..., (self._done - start) * repeats : (new_end - start) * repeats]
        ahead = mel[..., (new_end - start) * repeats :][..., : self._reach]
        before = self._mel_tail[..., -self._reach :] if self._reach else self._mel_tail[..., :0]
        wav = self._vocoder(torch.cat([before, new, ahead], dim=-1)).reshape(-1)
        first = before.shape[-1] * self._frame_samples
        self._emit(wav[first : first + new.shape[-1] * self._frame_samples])
        self._mel_tail = torch.cat([before, new], dim=-1)

    def _noise_frames(self, first: int, last: int) -> torch.Tensor:
        while len(self._noise) * self._block < last:
            self._noise.append(
                torch.randn((1, self._block, self._mel_dim), generator=self._generator)
            )
        # Only the blocks the window covers, not the whole reply's noise each time.
        low = first // self._block
        high = math.ceil(last / self._block)
        noise = torch.cat(self._noise[low:high], dim=1)
        noise = noise[:, first - low * self._block : last - low * self._block]
        return noise.to(device=self._device, dtype=torch.float32)

    def _dit_mel(self, codes: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The DiT's flow-matching ODE from `noise`, as `Qwen2_5OmniToken2WavDiTModel.sample`
        solves it (same steps, guidance and time warp), for a window of codes."""
        return dit_sample(
            self._dit,
            self._condition,
            self._reference_mel,
            codes,
            noise,
            steps=self._steps,
            guidance=self._guidance,
            sway=self._sway,
        )


def dit_sample(
    dit: Any,
    condition: torch.Tensor,
    reference_mel: torch.Tensor,
    codes: torch.Tensor,
    noise: torch.Tensor,
    *,
    steps: int = 10,
    guidance: float = 0.5,
    sway: float | None = -1.0,
) -> torch.Tensor:
    """Qwen2.5-Omni's DiT mel ([1, mel_dim, frames]) for `codes` from a given initial noise
    ([1, frames, mel_dim]); with the noise `sample()` would draw it returns what it returns."""
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import RungeKutta4ODESolver

    frames = noise.shape[1]
    speaker = condition.unsqueeze(1).repeat(1, frames, 1)

    def velocity(time: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        if guidance < 1e-5:
            return dit(
                hidden_states=state,
                speaker_embedding=speaker,
                condition_vector=reference_mel,
                quantized_code=codes,
                time_step=time,
                drop_audio_conditioning=False,
                drop_code=False,
                apply_cfg=False,
            )
        output = dit(
            hidden_states=state,
            quantized_code=codes,
            speaker_embedding=speaker,
            condition_vector=reference_mel,
            time_step=time,
            apply_cfg=True,
        )
        guided, unguided = torch.chunk(output, 2, dim=0)
        return guided + (guided - unguided) * guidance

    times = torch.linspace(0, 1, steps, device=codes.device, dtype=speaker.dtype)
    if sway is not None:
        times += sway * (torch.cos(torch.pi / 2 * times) - 1 + times)
    solution = RungeKutta4ODESolver(function=velocity, initial_value=noise).integrate(times)
    return solution[-1].permute(0, 2, 1)
