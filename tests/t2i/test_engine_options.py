"""Engine options applied to a real tiny pipeline: scheduler swap, attention, VAE memory
options; and a job's progress, previews and seed wrap-around seen from its JobContext."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from services.runtime.executor import JobContext
from services.t2i.config import T2ISettings
from services.t2i.engine import PreviewFrame, T2IEngine
from services.t2i.validation import GenerationRequest


def test_scheduler_attention_and_vae_options_apply(sd_dir: Path) -> None:
    settings = T2ISettings(
        model=str(sd_dir),
        scheduler="EulerDiscreteScheduler",
        attention="eager",
        vae_slicing=True,
        vae_tiling=True,
        warmup_steps=1,
    )
    engine = T2IEngine(settings)
    engine.load()
    engine.warmup()
    pipes = engine.pipelines
    assert engine.scheduler_name == "EulerDiscreteScheduler"
    # The image-to-image pipeline shares the components, so the swap reached it too.
    assert pipes.image_to_image.scheduler is pipes.text_to_image.scheduler
    assert pipes.image_to_image.unet is pipes.text_to_image.unet
    assert pipes.text_to_image.vae.use_slicing
    assert pipes.text_to_image.vae.use_tiling
    processors = {type(p).__name__ for p in pipes.text_to_image.unet.attn_processors.values()}
    assert processors == {"AttnProcessor"}  # eager, not AttnProcessor2_0 (sdpa)
    assert engine.info().attention_implementation == "eager"

    frames: list[PreviewFrame] = []
    steps: list[tuple[int, int]] = []
    ctx = JobContext(
        "job",
        "text_to_image",
        on_progress=lambda step, total, extra: steps.append((step, total)),
        on_output=frames.append,
    )
    plan = engine.plan(GenerationRequest(prompt="a cat", steps=3, seed=2**64 - 1, num_images=2))
    output = engine.generate(ctx, replace(plan, preview_every=3))
    assert len(output.images) == 2  # seed + 1 wrapped around 2**64
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert [frame.step for frame in frames] == [3]
    assert frames[0].rgb.dtype == np.uint8
    assert frames[0].rgb.shape == (32, 32, 3)  # latent resolution of a 64 px image


def test_unknown_scheduler_fails_loading(sd_dir: Path) -> None:
    engine = T2IEngine(T2ISettings(model=str(sd_dir), scheduler="NoSuchScheduler"))
    with pytest.raises(ValueError, match="NoSuchScheduler"):
        engine.load()
