"""The GPU plan without a GPU: its dry run fits the window, its cells run end to end on the tiny
models on CPU (the smoke run), and the fast random-weight builders make folders the services
load through their normal from_pretrained path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.gpu_plan import BUDGET_SECONDS, GPU_CAPABILITIES
from bench.models import SD_CONFIGS, build_clip_fast, build_sd_fast, build_vl_fast
from bench.random_weights import empty, materialise

REPO = Path(__file__).resolve().parents[2]
RUN = [sys.executable, "-m", "bench.run", "--plan", "gpu"]


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RUN, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_dry_run_prints_the_plan_and_fits_the_window() -> None:
    done = _run("--dry-run")
    assert done.returncode == 0, done.stderr[-3000:]
    plan = json.loads(done.stdout)
    assert (plan["profile"], plan["device"], plan["dtype"]) == ("gpu", "cuda", "bfloat16")
    assert plan["plan"] == "gpu"
    assert set(plan["estimates_s"]) == set(GPU_CAPABILITIES)
    assert plan["sizes"]["t2i_size"] == 512
    assert plan["sizes"]["t2i_steps"] == 20
    assert max(plan["concurrency"]["vision"]) == 64
    assert not plan["envoy"]
    assert not plan["litserve"]
    # Room for a slower machine than the estimates assume: half the command's limit.
    assert 0 < plan["estimated_total_s"] <= plan["budget_s"] / 2
    assert plan["budget_s"] == BUDGET_SECONDS


def test_smoke_needs_the_gpu_plan_and_the_plan_its_capabilities() -> None:
    assert (
        "--smoke goes with --plan gpu"
        in subprocess.run(
            [sys.executable, "-m", "bench.run", "--smoke", "--dry-run"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stderr
    )
    assert "measures vision, t2i, vl only" in _run("--capabilities", "edge", "--dry-run").stderr


def test_smoke_run_measures_every_cell_and_prints_the_gpu_goals(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    done = _run("--smoke", "--json", str(out), timeout=800)
    assert done.returncode == 0, done.stderr[-4000:]
    document = json.loads(out.read_text())
    meta = document["meta"]
    assert meta["plan"]["profile"] == "tiny"
    assert all(meta["capabilities"][n]["status"] == "ok" for n in GPU_CAPABILITIES)
    cells = {(c["capability"], c["path"], c["concurrency"]) for c in document["cells"]}
    for capability, clients in (("vision", 1), ("vision", 4), ("t2i", 1), ("vl", 1)):
        assert (capability, "in-process", clients) in cells
        assert (capability, "served", clients) in cells
    assert not any(path == "served+envoy" for _, path, _ in cells)
    goals = meta["gpu_goals"]
    assert len(goals) == 4
    assert all(g["met"] in (True, False) for g in goals), goals  # every goal was measured
    assert "GPU goals" in done.stdout
    assert "smoke run" in done.stdout


# --- fast random weights ------------------------------------------------------------------------


def test_materialise_keeps_ties_and_sets_norms_and_biases() -> None:
    from transformers import CLIPConfig, CLIPModel

    from services.vision.builtin.clip import TINY_CLIP

    config = CLIPConfig(
        text_config=TINY_CLIP["text_config"],
        vision_config=TINY_CLIP["vision_config"],
        projection_dim=TINY_CLIP["projection_dim"],
    )
    a = materialise(empty(lambda: CLIPModel(config)), torch.bfloat16, device=torch.device("cpu"))
    b = materialise(empty(lambda: CLIPModel(config)), torch.bfloat16, device=torch.device("cpu"))
    assert not any(p.is_meta for p in a.parameters())
    assert all(p.dtype == torch.bfloat16 for p in a.parameters())
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), f"{name} differs between two builds"
    norm = a.vision_model.post_layernorm
    assert torch.all(norm.weight == 1)
    assert torch.all(norm.bias == 0)
    weight = a.vision_model.encoder.layers[0].mlp.fc1.weight.float()
    assert 0.01 < weight.std().item() < 0.03
    assert a.logit_scale.item() == pytest.approx(2.659, abs=0.01)


def test_materialise_keeps_the_output_head_tied_to_the_embedding() -> None:
    from services.vl.builtin import qwen

    model = materialise(
        empty(lambda: qwen._model("qwen2_5_vl", qwen.SIZES["tiny"])),
        torch.float32,
        device=torch.device("cpu"),
    )
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert not model.lm_head.weight.is_meta


def test_fast_clip_folder_serves_through_the_vision_engine(tmp_path: Path) -> None:
    from services.vision.builtin.clip import TINY_CLIP
    from services.vision.config import VisionSettings
    from services.vision.engine import VisionEngine
    from services.vision.inputs import ImageJob

    build_clip_fast(tmp_path, TINY_CLIP, "bfloat16")
    engine = VisionEngine(VisionSettings(model=str(tmp_path)))  # loads as float32 on CPU
    engine.load()
    engine.warmup()
    images = [Image.new("RGB", (48, 40), (20 * i, 100, 50)) for i in range(2)]
    [vectors] = engine.embed_images_batch([ImageJob(engine.prepare_images(images), "cls")])
    assert vectors.shape == (2, TINY_CLIP["projection_dim"])
    assert np.isfinite(vectors).all()


def test_fast_sd_folder_loads_through_the_t2i_loader(tmp_path: Path) -> None:
    from services.runtime.devices import TorchOptions
    from services.t2i.config import T2ISettings
    from services.t2i.loader import load_pipelines

    build_sd_fast(tmp_path, SD_CONFIGS["tiny"], "bfloat16")
    loaded = load_pipelines(T2ISettings(model=str(tmp_path)), TorchOptions.from_specs("cpu"))
    image = loaded.text_to_image(
        "a red cube", num_inference_steps=2, height=64, width=64, output_type="np"
    ).images[0]
    assert image.shape == (64, 64, 3)
    assert np.isfinite(image).all()


def test_fast_vl_folder_decodes_every_requested_token(tmp_path: Path) -> None:
    from services.runtime.chat.messages import ImagePart, Message, Role, TextPart
    from services.runtime.chat.sampling import Sampling
    from services.runtime.executor import JobContext
    from services.vl.builtin import qwen
    from services.vl.chat import ChatInput
    from services.vl.config import VLSettings
    from services.vl.engine import CHAT_KIND, VLEngine

    spec = {"family": "qwen2_5_vl", "size": dict(qwen.SIZES["tiny"]), "dtype": "bfloat16"}
    build_vl_fast(tmp_path, spec)
    engine = VLEngine(VLSettings(model=str(tmp_path)))
    engine.load()
    picture = Image.new("RGB", (64, 56), (200, 30, 30))
    chat = ChatInput(
        (Message(Role.USER, (ImagePart(picture), TextPart("Describe it."))),),
        Sampling(max_new_tokens=10),
    )
    out = engine.generate(engine.prepare(chat), JobContext("fast", CHAT_KIND))
    # The end tokens' logits are zeroed: greedy decoding runs to the token limit.
    assert out.output_tokens == 10
