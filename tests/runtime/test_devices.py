"""services.runtime.devices: device, dtype and attention choice; CUDA and MPS are simulated
with monkeypatch so the "auto" rules are checked on a CPU-only machine too."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from services.runtime import devices
from services.runtime.devices import (
    TorchOptions,
    checkpoint_dtype,
    cpu_computes_bf16,
    device_memory_bytes,
    dtype_name,
    maybe_compile,
    resolve_attention,
    resolve_device,
    resolve_dtype,
)

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)
MPS = torch.device("mps")


@pytest.fixture
def no_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


@pytest.fixture
def one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


# --- devices ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_accelerator")
def test_auto_without_accelerator_is_cpu() -> None:
    assert resolve_device() == CPU
    assert resolve_device(" CPU ") == CPU
    assert resolve_device(CPU) == CPU


@pytest.mark.usefixtures("one_gpu")
def test_auto_prefers_the_visible_gpu() -> None:
    assert resolve_device("auto") == CUDA
    assert resolve_device("cuda") == CUDA
    assert resolve_device("cuda:0") == CUDA


def test_auto_uses_mps_when_there_is_no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: True)
    assert resolve_device("auto") == MPS
    assert resolve_device("mps") == MPS


@pytest.mark.usefixtures("no_accelerator")
def test_unavailable_devices_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ValueError, match=r"CUDA is not available.*CUDA_VISIBLE_DEVICES"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="MPS is not available"):
        resolve_device("mps")


@pytest.mark.usefixtures("one_gpu")
def test_cuda_index_beyond_visible_devices_is_refused() -> None:
    with pytest.raises(ValueError, match=r"only 1 CUDA device"):
        resolve_device("cuda:1")
    with pytest.raises(ValueError, match="must be a number"):
        resolve_device("cuda:x")


def test_unknown_device_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")


# --- dtypes -----------------------------------------------------------------------------------


def test_auto_dtype_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_dtype("auto", CPU) is torch.float32
    assert resolve_dtype("auto", MPS) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_dtype("auto", CUDA) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert resolve_dtype("auto", CUDA) is torch.float16


@pytest.mark.parametrize("instructions", [True, False])
def test_auto_on_cpu_keeps_a_bf16_checkpoint_only_with_bf16_instructions(
    monkeypatch: pytest.MonkeyPatch, instructions: bool
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: instructions)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert cpu_computes_bf16() is instructions
    expected = torch.bfloat16 if instructions else torch.float32
    assert resolve_dtype("auto", CPU, torch.bfloat16) is expected
    # fp16 checkpoints run in fp32 on CPU (fp16 kernels are slow there); explicit specs win.
    assert resolve_dtype("auto", CPU, torch.float16) is torch.float32
    assert resolve_dtype("auto", CPU, torch.float32) is torch.float32
    assert resolve_dtype("fp32", CPU, torch.bfloat16) is torch.float32
    options = TorchOptions.from_specs("cpu", checkpoint=torch.bfloat16)
    assert options.dtype is expected


def test_checkpoint_dtype_reads_config_json(tmp_path: Path) -> None:
    assert checkpoint_dtype(tmp_path) is None  # no config.json
    (tmp_path / "config.json").write_text('{"torch_dtype": "bfloat16"}')
    assert checkpoint_dtype(tmp_path) is torch.bfloat16
    (tmp_path / "config.json").write_text('{"dtype": "float32"}')
    assert checkpoint_dtype(tmp_path) is torch.float32
    (tmp_path / "config.json").write_text('{"text_config": {"dtype": "bfloat16"}}')
    assert checkpoint_dtype(tmp_path) is torch.bfloat16
    (tmp_path / "config.json").write_text("not json")
    assert checkpoint_dtype(tmp_path) is None


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("bf16", torch.bfloat16),
        ("BFloat16", torch.bfloat16),
        ("fp16", torch.float16),
        ("float16", torch.float16),
        ("fp32", torch.float32),
        ("float32", torch.float32),
    ],
)
def test_explicit_dtypes_are_honoured(spec: str, expected: torch.dtype) -> None:
    assert resolve_dtype(spec, CPU) is expected


def test_dtype_objects_pass_through() -> None:
    assert resolve_dtype(torch.bfloat16, CPU) is torch.bfloat16


def test_unknown_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        resolve_dtype("int8", CPU)


def test_dtype_name() -> None:
    assert [dtype_name(d) for d in (torch.float32, torch.float16, torch.bfloat16)] == [
        "float32",
        "float16",
        "bfloat16",
    ]
    assert dtype_name(torch.int8) == "int8"


# --- attention --------------------------------------------------------------------------------


def test_auto_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "_flash_attn_available", lambda: True)
    assert resolve_attention("auto", CUDA) == "flash_attention_2"
    assert resolve_attention("auto", CPU) == "sdpa"  # flash-attn kernels are CUDA-only
    monkeypatch.setattr(devices, "_flash_attn_available", lambda: False)
    assert resolve_attention("auto", CUDA) == "sdpa"


def test_flash_attn_is_really_probed() -> None:
    # flash_attn is not installed on CPU machines; the real probe must say so, not crash.
    try:
        import flash_attn  # noqa: F401
    except Exception:
        assert devices._flash_attn_available() is False


def test_explicit_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_attention("SDPA", CPU) == "sdpa"
    assert resolve_attention("eager", CUDA) == "eager"
    monkeypatch.setattr(devices, "_flash_attn_available", lambda: False)
    with pytest.raises(ValueError, match="flash_attn package is not installed"):
        resolve_attention("flash_attention_2", CUDA)
    monkeypatch.setattr(devices, "_flash_attn_available", lambda: True)
    assert resolve_attention("flash_attention_2", CUDA) == "flash_attention_2"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_attention("flash_attention_2", CPU)
    with pytest.raises(ValueError, match="unknown attention"):
        resolve_attention("flash", CPU)


# --- compile and memory -----------------------------------------------------------------------


def test_compile_disabled_returns_the_module_untouched() -> None:
    module = torch.nn.Linear(3, 2)
    assert maybe_compile(module, False, "max-autotune") is module
    assert getattr(module, "_compiled_call_impl", None) is None


def test_compile_enabled_keeps_the_module_object_and_its_results() -> None:
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 2)
    x = torch.ones(1, 3)
    expected = module(x)
    # The eager backend runs dynamo's capture without a C++ toolchain, so the test stays fast.
    compiled = maybe_compile(module, True, None, backend="eager")
    assert compiled is module
    assert module._compiled_call_impl is not None
    assert torch.allclose(module(x), expected)
    assert list(module.state_dict()) == ["weight", "bias"]  # no "_orig_mod." prefix


def test_compile_of_a_function_and_bad_mode() -> None:
    def double(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    assert maybe_compile(double, True, "default", backend="eager")(torch.ones(2)).tolist() == [
        2.0,
        2.0,
    ]
    with pytest.raises(ValueError, match="unknown compile mode"):
        maybe_compile(double, True, "turbo")


def test_device_memory_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    rss = device_memory_bytes(CPU)
    assert isinstance(rss, int)
    assert rss > 10 * 1024 * 1024  # this process has torch loaded
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 12345)
    assert device_memory_bytes(CUDA) == 12345
    assert device_memory_bytes(torch.device("meta")) is None


# --- TorchOptions -----------------------------------------------------------------------------


@pytest.mark.usefixtures("no_accelerator")
def test_torch_options_from_specs_on_cpu() -> None:
    options = TorchOptions.from_specs()
    assert options == TorchOptions(CPU, torch.float32, "sdpa", False, None)
    assert options.describe() == {
        "device": "cpu",
        "dtype": "float32",
        "attention": "sdpa",
        "compile": "off",
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.compile = True  # type: ignore[misc]


@pytest.mark.usefixtures("one_gpu")
def test_torch_options_from_specs_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(devices, "_flash_attn_available", lambda: False)
    options = TorchOptions.from_specs(compile=True, compile_mode="max-autotune")
    assert (options.device, options.dtype, options.attention) == (CUDA, torch.bfloat16, "sdpa")
    assert options.describe()["compile"] == "max-autotune"
    with pytest.raises(ValueError, match="compile mode"):
        TorchOptions.from_specs(compile=True, compile_mode="fast")
