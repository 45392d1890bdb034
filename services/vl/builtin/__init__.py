"""The vl built-in models: tiny random-weight Qwen2.5-VL and Qwen2-VL with the real
architectures, vocabulary, chat template and image processor, for tests, benchmarks and the
default local run (no model hub is reachable here).

The builders (services.vl.builtin.qwen) save with `save_pretrained`, so the service loads a
built-in through the very code path it uses for a downloaded checkpoint. Nothing here imports
torch or transformers until a model is built: `--help` stays cheap. The builders' public
names (`tiny_model_dir`, `build_model` for other sizes) are in services.vl.builtin.qwen.
"""

from __future__ import annotations

from services.runtime.builtin import BuiltinModel, BuiltinModels

BUILTINS = BuiltinModels(
    (
        BuiltinModel(
            "qwen2.5-vl",
            "services.vl.builtin.qwen:tiny_qwen25_vl_dir",
            "tiny Qwen2.5-VL (2 layers, the real Qwen vocabulary, template and image processor)",
        ),
        BuiltinModel(
            "qwen2.5-vl-small",
            "services.vl.builtin.qwen:small_qwen25_vl_dir",
            "small Qwen2.5-VL (4 layers, 256 wide), for benchmarks",
        ),
        BuiltinModel(
            "qwen2-vl",
            "services.vl.builtin.qwen:tiny_qwen2_vl_dir",
            "tiny Qwen2-VL (the older family, full-attention vision tower)",
        ),
    ),
    default="qwen2.5-vl",
)
