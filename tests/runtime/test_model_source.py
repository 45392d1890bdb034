"""services.runtime.model_source and prefetch: folders and hub ids resolve offline, families come
from the folder's own metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.runtime import prefetch
from services.runtime.model_source import (
    ModelFamily,
    ModelNotAvailable,
    ModelSource,
    discover_family,
    family_from_class_name,
    resolve_model_dir,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _write_json(folder: Path, name: str, data: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(data), encoding="utf-8")
    return folder


def _pipeline(folder: Path, class_name: str) -> Path:
    index = {
        "_class_name": class_name,
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    return _write_json(folder, "model_index.json", index)


def _fake_hub_cache(cache: Path, repo_id: str, commit: str = "a" * 40) -> Path:
    """The layout huggingface_hub's snapshot_download leaves behind, without any download."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    snapshot = repo / "snapshots" / commit
    _write_json(snapshot, "config.json", {"model_type": "clip", "architectures": ["CLIPModel"]})
    return snapshot


# --- families ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("class_name", "family"),
    [
        ("StableDiffusionPipeline", "stable_diffusion"),
        ("StableDiffusionXLPipeline", "stable_diffusion_xl"),
        ("StableDiffusion3Pipeline", "stable_diffusion_3"),
        ("HunyuanDiTPipeline", "hunyuan_dit"),
        ("QwenImagePipeline", "qwen_image"),
        ("FluxPipeline", "flux"),
        ("StableDiffusionXLImg2ImgPipeline", "stable_diffusion_xl"),
        ("StableDiffusionInpaintPipeline", "stable_diffusion"),
        ("PixArtSigmaPipeline", "pixart_sigma"),
        ("Kandinsky3Pipeline", "kandinsky_3"),
        ("IFPipeline", "if"),
        ("LTXPipeline", "ltx"),
    ],
)
def test_diffusers_families(tmp_path: Path, class_name: str, family: str) -> None:
    found = discover_family(_pipeline(tmp_path / "m", class_name))
    assert found == ModelFamily("diffusers", family, class_name, family)
    assert found.config["_class_name"] == class_name
    assert family_from_class_name(class_name) == family


@pytest.mark.parametrize(
    ("model_type", "architecture"),
    [
        ("clip", "CLIPModel"),
        ("siglip", "SiglipModel"),
        ("dinov2", "Dinov2Model"),
        ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"),
        ("qwen2_vl", "Qwen2VLForConditionalGeneration"),
        ("qwen2_5_omni", "Qwen2_5OmniForConditionalGeneration"),
    ],
)
def test_transformers_families(tmp_path: Path, model_type: str, architecture: str) -> None:
    config = {"model_type": model_type, "architectures": [architecture], "hidden_size": 8}
    found = discover_family(_write_json(tmp_path, "config.json", config))
    assert (found.library, found.family, found.class_name, found.model_type) == (
        "transformers",
        model_type,
        architecture,
        model_type,
    )
    assert found.config["hidden_size"] == 8
    assert not found.needs_remote_code


def test_a_real_saved_transformers_config(tmp_path: Path) -> None:
    from transformers import CLIPVisionConfig

    CLIPVisionConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=1).save_pretrained(
        tmp_path
    )
    found = discover_family(tmp_path)
    assert (found.library, found.family) == ("transformers", "clip_vision_model")


def test_model_index_wins_over_config(tmp_path: Path) -> None:
    _write_json(tmp_path, "config.json", {"model_type": "clip"})
    assert discover_family(_pipeline(tmp_path, "FluxPipeline")).library == "diffusers"


def test_remote_code_and_missing_architectures(tmp_path: Path) -> None:
    config = {"model_type": "minicpmo", "auto_map": {"AutoModel": "modeling.MiniCPMO"}}
    found = discover_family(_write_json(tmp_path, "config.json", config))
    assert found.needs_remote_code
    assert found.class_name == ""


def test_single_diffusers_model_folder(tmp_path: Path) -> None:
    config = {"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.42.1"}
    found = discover_family(_write_json(tmp_path, "config.json", config))
    assert (found.library, found.class_name) == ("diffusers", "UNet2DConditionModel")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("model_index.json", "{not json", "not readable JSON"),
        ("model_index.json", "[1, 2]", "JSON object"),
        ("model_index.json", '{"_diffusers_version": "0.42"}', "_class_name"),
        ("config.json", '{"hidden_size": 8}', "model_type"),
    ],
)
def test_bad_metadata_is_refused(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        discover_family(tmp_path)


def test_folder_without_metadata_is_refused(tmp_path: Path) -> None:
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=f"{tmp_path}.*neither model_index.json"):
        discover_family(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        discover_family(tmp_path / "missing")


# --- sources and tokens -----------------------------------------------------------------------


def test_token_comes_from_the_environment_and_stays_out_of_repr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_legacy")
    source = ModelSource("org/model", revision="v1")
    assert source.auth_token() == "hf_legacy"
    monkeypatch.setenv("HF_TOKEN", "hf_current")
    assert source.auth_token() == "hf_current"
    explicit = ModelSource("org/model", token="hf_explicit")
    assert explicit.auth_token() == "hf_explicit"
    assert "hf_" not in repr(explicit)
    assert explicit == ModelSource("org/model")


def test_local_folder_is_returned_as_is(tmp_path: Path) -> None:
    folder = _pipeline(tmp_path / "sd", "StableDiffusionPipeline")
    assert resolve_model_dir(ModelSource(str(folder)), allow_download=False) == folder


@pytest.mark.parametrize("model", ["/no/such/model", "./missing-model", "a/b/c"])
def test_missing_local_path_names_the_model(model: str) -> None:
    with pytest.raises(ModelNotAvailable, match=f"model '{model}': no such folder"):
        resolve_model_dir(ModelSource(model), allow_download=False)


def test_hub_id_not_in_cache_says_how_to_prefetch(tmp_path: Path) -> None:
    source = ModelSource("example-org/not-cached", revision="main", cache_dir=str(tmp_path))
    with pytest.raises(ModelNotAvailable) as info:
        resolve_model_dir(source, allow_download=False)
    message = str(info.value)
    assert "example-org/not-cached" in message
    assert "services.runtime.prefetch --model example-org/not-cached --revision main" in message


def test_invalid_hub_id_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match="valid hub id"):
        resolve_model_dir(ModelSource("bad id!", cache_dir=str(tmp_path)), allow_download=False)


def test_hub_id_resolves_from_the_local_cache(tmp_path: Path) -> None:
    snapshot = _fake_hub_cache(tmp_path, "example-org/tiny-clip")
    source = ModelSource("example-org/tiny-clip", cache_dir=str(tmp_path))
    folder = resolve_model_dir(source, allow_download=False)
    assert folder == snapshot
    assert discover_family(folder).family == "clip"


# --- prefetch ---------------------------------------------------------------------------------


def test_prefetch_checks_and_prints_local_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sd = _pipeline(tmp_path / "sd", "StableDiffusionXLPipeline")
    clip = _write_json(tmp_path / "clip", "config.json", {"model_type": "clip"})
    assert prefetch.main(["--model", str(sd), "--model", str(clip)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"{sd} -> {sd} (diffusers stable_diffusion_xl)",
        f"{clip} -> {clip} (transformers clip)",
    ]


def test_prefetch_reports_failures_and_keeps_going(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _write_json(tmp_path / "good", "config.json", {"model_type": "clip"})
    (tmp_path / "empty").mkdir()
    args = ["--model", "/no/such/model", "--model", str(tmp_path / "empty"), "--model", str(good)]
    code = prefetch.main(args)
    captured = capsys.readouterr()
    assert code == 1
    assert "/no/such/model: FAILED" in captured.err
    assert "empty: FAILED" in captured.err
    assert f"{good} -> {good}" in captured.out


def test_prefetch_runs_as_a_module(tmp_path: Path) -> None:
    folder = _pipeline(tmp_path / "qwen", "QwenImagePipeline")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "services.runtime.prefetch", "--model", str(folder)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{folder} -> {folder} (diffusers qwen_image)"
