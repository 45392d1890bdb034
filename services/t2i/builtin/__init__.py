"""The t2i built-in models: tiny random-weight pipelines of the real families, for tests,
benchmarks and the default local run (no model hub is reachable here).

Each builder uses the real component classes, configured as small as diffusers' own pipeline
tests configure them, with the real tokenizers where the family uses them (CLIP's BPE for Stable
Diffusion, Qwen2.5's BPE for Qwen-Image), saves the pipeline with `save_pretrained` and is cached
by `cached_model_dir`, so the service loads it through exactly the path real checkpoints take.
Nothing here imports torch or diffusers until a model is built: `--help` stays cheap.
"""

from __future__ import annotations

from services.runtime.builtin import BuiltinModel, BuiltinModels

BUILTINS = BuiltinModels(
    (
        BuiltinModel(
            "stable_diffusion",
            "services.t2i.builtin.stable_diffusion:model_dir",
            "tiny Stable Diffusion (UNet, CLIP text encoder and tokenizer, DDIM)",
        ),
        BuiltinModel(
            "stable_diffusion_xl",
            "services.t2i.builtin.stable_diffusion_xl:model_dir",
            "tiny Stable Diffusion XL (UNet with text-and-time conditioning, two CLIP text "
            "encoders, Euler)",
        ),
        BuiltinModel(
            "stable_diffusion_3",
            "services.t2i.builtin.stable_diffusion_3:model_dir",
            "tiny Stable Diffusion 3 (MMDiT, two CLIP and one T5 text encoder, flow matching)",
        ),
        BuiltinModel(
            "flux",
            "services.t2i.builtin.flux:model_dir",
            "tiny FLUX.1 (double- and single-stream transformer with embedded guidance, CLIP "
            "and T5 text encoders, flow matching)",
        ),
        BuiltinModel(
            "hunyuan_dit",
            "services.t2i.builtin.hunyuan_dit:model_dir",
            "tiny HunyuanDiT (DiT, BERT and T5 text encoders; no image-to-image)",
        ),
        BuiltinModel(
            "qwen_image",
            "services.t2i.builtin.qwen_image:model_dir",
            "tiny Qwen-Image (MMDiT, Qwen2.5-VL text encoder and tokenizer; inpainting and "
            "instruction edits)",
        ),
    ),
    default="stable_diffusion",
)
