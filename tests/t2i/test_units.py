"""The pure parts of the t2i service: limits, sizes, plans, preview layouts and settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.runtime.config import ConfigError, load_settings
from services.runtime.errors import InvalidArgument, Unimplemented
from services.t2i.config import T2ISettings
from services.t2i.families import GenerationLimits, profile_for, resolve_limits
from services.t2i.previews import LatentPreviewer
from services.t2i.validation import GenerationRequest, fit_size, plan_generation


def limits(**overrides: object) -> GenerationLimits:
    settings = T2ISettings(**overrides)  # type: ignore[arg-type]
    return resolve_limits(
        profile_for("stable_diffusion"),
        settings,
        native_size=512,
        min_multiple=8,
        max_prompt_tokens=77,
        supports_image_to_image=True,
        scheduler_max_steps=999,
    )


def test_family_defaults_and_overrides() -> None:
    sd = limits()
    assert (sd.size_multiple, sd.max_size, sd.max_pixels) == (8, 1024, 1024 * 1024)
    assert (sd.default_width, sd.default_steps, sd.default_guidance_scale) == (512, 30, 7.5)
    tuned = limits(max_steps=4, default_steps=2, default_guidance_scale=0.0, size_multiple=64)
    assert (tuned.max_steps, tuned.default_steps, tuned.default_guidance_scale) == (4, 2, 0.0)
    assert (tuned.size_multiple, tuned.min_size) == (64, 64)
    # Other families keep their own conventions.
    assert profile_for("qwen_image").cfg_argument == "true_cfg_scale"
    assert not profile_for("flux").negative_prompt
    assert profile_for("some_new_pipeline") == profile_for("")


def test_scheduler_caps_max_steps_and_bad_defaults_fail_at_start() -> None:
    assert limits(max_steps=5000).max_steps == 999
    with pytest.raises(ValueError, match="default_width"):
        limits(default_width=100)  # not a multiple of 8
    with pytest.raises(ValueError, match="default_guidance_scale"):
        limits(max_guidance_scale=2.0, default_guidance_scale=3.0)


def test_input_sizes_fit_the_limits_keeping_aspect() -> None:
    sd = limits()
    width, height = fit_size((4000, 3000), sd)
    assert width <= 1024
    assert height <= 1024
    assert width * height <= sd.max_pixels
    assert width % 8 == 0
    assert height % 8 == 0
    assert abs(width / height - 4 / 3) < 0.05
    assert fit_size((640, 480), sd) == (640, 480)  # already fine: unchanged
    assert fit_size((30, 20), sd) == (64, 64)  # up to min_size
    tall = fit_size((64, 8000), sd)
    assert tall[0] * tall[1] <= sd.max_pixels
    assert tall[1] <= 1024


def test_plan_fills_defaults_and_draws_a_seed() -> None:
    sd = limits()
    plan = plan_generation(GenerationRequest(prompt="a cat"), sd)
    assert (plan.width, plan.height, plan.steps, plan.num_images) == (512, 512, 30, 1)
    assert plan.guidance_scale == 7.5
    assert plan.strength is None
    other = plan_generation(GenerationRequest(prompt="a cat"), sd)
    assert plan.seed != other.seed
    assert 0 <= plan.seed < 2**53
    edit = plan_generation(GenerationRequest(prompt="x", input_size=(800, 600)), sd)
    assert (edit.width, edit.height, edit.strength) == (800, 600, 0.6)


def test_plan_reports_every_problem_and_unimplemented_image_to_image() -> None:
    sd = limits()
    with pytest.raises(InvalidArgument) as caught:
        plan_generation(
            GenerationRequest(
                prompt="",
                width=1001,
                steps=0,
                guidance_scale=float("nan"),
                input_size=(64, 64),
                strength=0.1,
            ),
            sd,
        )
    assert {v.field for v in caught.value.violations} == {
        "params.prompt",
        "params.width",
        "params.num_inference_steps",
        "params.guidance_scale",
        "strength",
    }
    # 0.1 of 4 steps leaves none to run.
    with pytest.raises(InvalidArgument, match="strength"):
        plan_generation(
            GenerationRequest(prompt="x", steps=4, input_size=(64, 64), strength=0.1), sd
        )
    no_i2i = resolve_limits(
        profile_for("hunyuan_dit"),
        T2ISettings(),
        native_size=1024,
        min_multiple=16,
        max_prompt_tokens=77,
        supports_image_to_image=False,
    )
    with pytest.raises(Unimplemented):
        plan_generation(GenerationRequest(prompt="x", input_size=(64, 64)), no_i2i)


def test_previews_read_every_latent_layout_alike() -> None:
    generator = torch.Generator().manual_seed(0)
    previewer = LatentPreviewer(torch.randn(5, 3, generator=generator) * 0.3, vae_scale_factor=8)
    grid = torch.randn(2, 4, 8, 6, generator=generator)  # (B, C, h, w) for a 64x48 image
    # FLUX/Qwen-Image pack 2x2 latent patches into tokens: (B, h/2 * w/2, C*4).
    packed = grid.reshape(2, 4, 4, 2, 3, 2).permute(0, 2, 4, 1, 3, 5).reshape(2, 12, 16)
    plain = previewer.rgb(grid, 64, 48)
    assert plain.shape == (8, 6, 3)
    assert plain.dtype.name == "uint8"
    assert (previewer.rgb(packed, 64, 48) == plain).all()
    assert (previewer.rgb(grid.unsqueeze(2), 64, 48) == plain).all()  # (B, C, T, h, w)


def test_settings_from_the_t2i_table_env_and_flags(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "mmserve.toml"
    config.write_text("[t2i]\nmax_steps = 12\ndefault_steps = 4\ncpu_offload = 'model'\n")
    monkeypatch.setenv("MMSERVE_MAX_IMAGES_PER_REQUEST", "2")
    settings = load_settings(T2ISettings, ["--config", str(config), "--default-steps", "6"])
    assert (settings.max_steps, settings.default_steps) == (12, 6)
    assert (settings.max_images_per_request, settings.cpu_offload) == (2, "model")
    assert (settings.port, settings.metrics_port) == (50051, 9091)
    with pytest.raises(ConfigError, match="default_steps"):
        load_settings(T2ISettings, ["--max-steps", "3", "--default-steps", "5"])
