"""The vision built-in models: tiny random-weight embedding models with the real architectures,
for tests, benchmarks and the default local run (no model hub is reachable here).

Each builder saves the model with `save_pretrained` and its processor with
`processor.save_pretrained`, so the service loads them through the very code path it uses for
real checkpoints; `cached_model_dir` builds each one once per config (seeded, so the weights are
the same on every machine). Nothing here imports torch or transformers until a model is built:
`--help` stays cheap.
"""

from __future__ import annotations

from services.runtime.builtin import BuiltinModel, BuiltinModels

BUILTINS = BuiltinModels(
    (
        BuiltinModel(
            "clip",
            "services.vision.builtin.clip:tiny_clip_dir",
            "tiny CLIP (2 layers, the real 49,408-token CLIP vocabulary)",
        ),
        BuiltinModel(
            "siglip",
            "services.vision.builtin.siglip:tiny_siglip_dir",
            "tiny SigLIP (sigmoid zero-shot, a small made-up Unigram tokenizer)",
        ),
        BuiltinModel(
            "siglip2",
            "services.vision.builtin.siglip:tiny_siglip2_dir",
            "tiny SigLIP2 (NaFlex aspect-preserving patches)",
        ),
        BuiltinModel(
            "dinov2",
            "services.vision.builtin.dino:tiny_dinov2_dir",
            "tiny DINOv2 (image only; CLS or mean pooling)",
        ),
        BuiltinModel(
            "dinov3",
            "services.vision.builtin.dino:tiny_dinov3_dir",
            "tiny DINOv3 (image only, with register tokens)",
        ),
        BuiltinModel(
            "clip-b32",
            "services.vision.builtin.clip:clip_b32_dir",
            "CLIP ViT-B/32-sized (about 600 MB), for benchmarks",
        ),
    ),
    default="clip",
)
