"""services.runtime.model_cache: tiny real models are built once per config, reproducibly, and
safely when several processes ask at the same moment."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from services.runtime import model_cache
from services.runtime.model_cache import COMPLETE_MARKER, cache_key, cached_model_dir

TINY_BERT: dict[str, Any] = {
    "vocab_size": 99,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 37,
    "max_position_embeddings": 64,
}


def _build_bert(folder: Path) -> None:
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(**TINY_BERT)).save_pretrained(folder)


def _slow_marker_build(folder: Path) -> None:
    """Builder for the multi-process test: records each build, and is slow enough to overlap."""
    log = Path(os.environ["MODEL_CACHE_TEST_LOG"])
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"{os.getpid()}\n")
    time.sleep(0.5)
    (folder / "weights.bin").write_bytes(b"\x00" * 16)


def _build_in_child(root: str, log: str, queue: Any) -> None:
    os.environ["MODEL_CACHE_TEST_LOG"] = log
    path = cached_model_dir("racer", {"n": 1}, _slow_marker_build, root=Path(root))
    queue.put(str(path))


# --- keys -------------------------------------------------------------------------------------


def test_key_is_canonical_and_covers_name_config_and_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = cache_key("bert", {"a": 1, "b": [1, 2]})
    assert key == cache_key("bert", {"b": (1, 2), "a": 1})  # order and tuple/list do not matter
    assert len(key) == 64
    assert key != cache_key("bert", {"a": 2, "b": [1, 2]})
    assert key != cache_key("bert2", {"a": 1, "b": [1, 2]})
    monkeypatch.setattr(model_cache, "BUILDER_VERSION", model_cache.BUILDER_VERSION + 1)
    assert key != cache_key("bert", {"a": 1, "b": [1, 2]})


def test_bad_names_and_configs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="name"):
        cached_model_dir("../escape", {}, lambda folder: None, root=tmp_path)
    with pytest.raises(TypeError, match="JSON-like"):
        cached_model_dir("x", {"obj": object()}, lambda folder: None, root=tmp_path)


# --- building ---------------------------------------------------------------------------------


def test_tiny_bert_is_built_once_and_loads_back(tmp_path: Path) -> None:
    from transformers import BertModel

    calls: list[Path] = []

    def build(folder: Path) -> None:
        calls.append(folder)
        _build_bert(folder)

    path = cached_model_dir("tiny-bert", TINY_BERT, build, root=tmp_path)
    assert path.parent == tmp_path
    assert path.name == f"tiny-bert-{cache_key('tiny-bert', TINY_BERT)[:12]}"
    assert (path / COMPLETE_MARKER).is_file()
    assert len(calls) == 1
    assert calls[0] != path  # built elsewhere, then renamed into place

    again = cached_model_dir("tiny-bert", TINY_BERT, build, root=tmp_path)
    assert again == path
    assert len(calls) == 1  # the second call found it complete

    model = BertModel.from_pretrained(path)
    assert model.config.num_hidden_layers == 2
    output = model(input_ids=torch.tensor([[1, 2, 3]])).last_hidden_state
    assert output.shape == (1, 3, 32)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [path.name]


def test_weights_are_reproducible_and_caller_rng_is_untouched(tmp_path: Path) -> None:
    def build(folder: Path) -> None:
        (folder / "w.pt").write_bytes(torch.rand(8).numpy().tobytes())

    torch.manual_seed(1234)
    expected_next = torch.rand(3)
    torch.manual_seed(1234)
    first = cached_model_dir("w", {"v": 1}, build, root=tmp_path / "a")
    assert torch.equal(torch.rand(3), expected_next)  # the build's seeding did not leak
    second = cached_model_dir("w", {"v": 1}, build, root=tmp_path / "b")
    assert (first / "w.pt").read_bytes() == (second / "w.pt").read_bytes()


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    def broken(folder: Path) -> None:
        (folder / "half.bin").write_bytes(b"x")
        raise RuntimeError("builder crashed")

    with pytest.raises(RuntimeError, match="builder crashed"):
        cached_model_dir("m", {}, broken, root=tmp_path)
    assert [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    path = cached_model_dir("m", {}, lambda folder: (folder / "ok").write_text("1"), root=tmp_path)
    assert (path / "ok").read_text() == "1"


def test_incomplete_folder_and_stale_temp_dirs_are_replaced(tmp_path: Path) -> None:
    slug = f"m-{cache_key('m', {})[:12]}"
    (tmp_path / slug).mkdir()  # e.g. copied by hand without its marker
    (tmp_path / slug / "junk").write_text("old")
    (tmp_path / f".{slug}.tmp-crashed").mkdir()
    path = cached_model_dir("m", {}, lambda folder: (folder / "new").write_text("1"), root=tmp_path)
    assert sorted(p.name for p in path.iterdir()) == [COMPLETE_MARKER, "new"]
    assert not (tmp_path / f".{slug}.tmp-crashed").exists()


def test_root_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSERVE_MODEL_CACHE", str(tmp_path / "env-cache"))
    path = cached_model_dir("e", {}, lambda folder: None, root=None)
    assert path.parent == tmp_path / "env-cache"
    monkeypatch.delenv("MMSERVE_MODEL_CACHE")
    assert model_cache.default_cache_root().name == "models-cache"


def test_concurrent_processes_build_once(tmp_path: Path) -> None:
    log = tmp_path / "builds.log"
    root = tmp_path / "cache"
    # fork: spawn would re-import torch in each child (seconds on a busy 2-core machine). The
    # children run no torch kernels (the builder writes a file), so the usual hazards of forking
    # a torch process (OpenMP pools, CUDA state) do not arise.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    queue = context.Queue()
    workers = [
        context.Process(target=_build_in_child, args=(str(root), str(log), queue)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    paths = {queue.get(timeout=5) for _ in workers}
    assert len(paths) == 1
    assert len(log.read_text().splitlines()) == 1  # one builder; the other waited and reused it
    entries = sorted(p.name for p in root.iterdir())
    assert [e for e in entries if not e.endswith(".lock")] == [Path(paths.pop()).name]
