"""A tiny random-weight Qwen3-Omni (Qwen3OmniMoeForConditionalGeneration: MoE thinker with its
audio and vision encoders, MoE talker with its code predictor, code2wav; the real classes) with
the real Qwen vocabulary and Qwen3-Omni's special tokens at their real ids, built once into the
model cache. It is the Qwen3-Omni path's test model: the same loading and generate() code as
Qwen/Qwen3-Omni-30B-A3B-Instruct, answers are random. Ids, vocabulary sizes and codec ids follow
the real config; every width, depth and expert count is tiny.

Traps met building it (transformers 5.23):
- the talker's MoE expert weights are not initialised by `_init_weights` (left as torch.empty
  garbage, up to 1e38, so the talker's first step is NaN): initialised here explicitly;
- the talker text config needs `shared_expert_intermediate_size` and the talker config
  `spatial_merge_size` (no defaults); the thinker config needs `vision_start_token_id`;
- `num_position_embeddings` of the vision encoder must be a square (a grid of positions);
- the talker reads `talker_config.audio_config.n_window` (see families.qwen3_omni);
- no torchvision: the processor is assembled without a video processor and saved in parts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.omni.families.qwen3_omni import QWEN3_OMNI_CHAT_TEMPLATE, Qwen3OmniProcessor
from services.runtime.model_cache import cached_model_dir
from services.runtime.tokenizers import QWEN25_EXTRA_SPECIALS, QWEN_VL_SPECIALS, qwen_tokenizer

CACHE_NAME = "tiny-qwen3-omni"
# After <|endoftext|>, <|im_start|>, <|im_end|>: ids 151646.. as in Qwen3-Omni's tokenizer.
QWEN3_OMNI_SPECIALS = (
    *QWEN_VL_SPECIALS,
    *QWEN25_EXTRA_SPECIALS,
    "<tool_response>", "</tool_response>", "<think>", "</think>", "<|audio_start|>",
    "<|audio_end|>", "<tts_pad>", "<tts_text_bos>", "<tts_text_eod>", "<tts_text_bos_single>",
    "<|audio_pad|>",
)  # fmt: skip
QWEN3_OMNI_EXTRA_TOKENS = {
    "image_token": "<|image_pad|>",
    "audio_token": "<|audio_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
    "audio_bos_token": "<|audio_start|>",
    "audio_eos_token": "<|audio_end|>",
}
SPEAKER_IDS = {"chelsie": 2301, "ethan": 2302, "aiden": 2303}  # codec ids, as in the real config
HIDDEN = 64
CODE_GROUPS = 4  # codebooks per codec frame (16 in the real model)
_ROPE = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6}  # sum = head/2
_MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
_MEDIA_IDS = {
    "audio_token_id": 151675, "image_token_id": 151655, "video_token_id": 151656,
    "audio_start_token_id": 151669, "vision_start_token_id": 151652,
    "position_id_per_seconds": 13,
}  # fmt: skip

TINY_CONFIG: dict[str, Any] = {
    "thinker_config": {
        "text_config": {
            "vocab_size": 152064, "hidden_size": HIDDEN, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 16, "rope_parameters": _ROPE, "max_position_embeddings": 4096, **_MOE,
            # At 0.02 the tiny residual stream stays its input embedding and the tied head
            # repeats the last prompt token ("\n") forever; wider weights give varied text.
            "initializer_range": 0.2,
        },
        "vision_config": {
            "depth": 2, "hidden_size": HIDDEN, "intermediate_size": 128, "num_heads": 4,
            "out_hidden_size": HIDDEN, "patch_size": 16, "spatial_merge_size": 2,
            "temporal_patch_size": 2, "deepstack_visual_indexes": [0],
            "num_position_embeddings": 256,
        },
        "audio_config": {
            "num_mel_bins": 128, "d_model": HIDDEN, "encoder_layers": 2,
            "encoder_attention_heads": 4, "encoder_ffn_dim": 128, "output_dim": HIDDEN,
            "downsample_hidden_size": 32,
        },
        **_MEDIA_IDS,
        "tie_word_embeddings": True,  # saves 39 MB
    },
    "talker_config": {
        "text_config": {
            "vocab_size": 3072, "hidden_size": HIDDEN, "intermediate_size": 128,
            "shared_expert_intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "rope_parameters": _ROPE, "max_position_embeddings": 4096, **_MOE,
        },
        "code_predictor_config": {
            "vocab_size": 2048, "hidden_size": HIDDEN, "intermediate_size": 128,
            "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 16, "num_code_groups": CODE_GROUPS, "max_position_embeddings": 64,
        },
        "num_code_groups": CODE_GROUPS, "thinker_hidden_size": HIDDEN,
        "accept_hidden_layer": 1,  # of the thinker's hidden states (0: embeddings)
        "codec_eos_token_id": 2150, "codec_nothink_id": 2155, "codec_think_bos_id": 2156,
        "codec_think_eos_id": 2157, "codec_pad_id": 2148, "codec_bos_id": 2149,
        "speaker_id": SPEAKER_IDS, "spatial_merge_size": 2, **_MEDIA_IDS,
    },
    "code2wav_config": {
        "codebook_size": 2048, "hidden_size": HIDDEN, "num_attention_heads": 4,
        "num_key_value_heads": 4, "intermediate_size": 128, "num_hidden_layers": 1,
        "num_quantizers": CODE_GROUPS, "decoder_dim": 64,
    },
}  # fmt: skip


def tiny_qwen3_omni_dir() -> Path:
    return cached_model_dir(CACHE_NAME, {"model": TINY_CONFIG, "template": 1}, _build)


def _build(folder: Path) -> None:
    import torch
    from transformers import (
        Qwen2VLImageProcessorPil,
        Qwen3OmniMoeConfig,
        Qwen3OmniMoeForConditionalGeneration,
        WhisperFeatureExtractor,
    )

    tokenizer = qwen_tokenizer(
        QWEN3_OMNI_SPECIALS, QWEN3_OMNI_EXTRA_TOKENS, QWEN3_OMNI_CHAT_TEMPLATE
    )
    processor = Qwen3OmniProcessor(
        # Qwen3-Omni's vision patches are 16 px, merged 2 x 2; its images are normalised to
        # [-1, 1]. Up to 64 x 64 px here, so an image is at most 4 tokens.
        image_processor=Qwen2VLImageProcessorPil(
            min_pixels=32 * 32,
            max_pixels=64 * 64,
            patch_size=16,
            merge_size=2,
            temporal_patch_size=2,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        ),
        feature_extractor=WhisperFeatureExtractor(feature_size=128),
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=QWEN3_OMNI_CHAT_TEMPLATE,
    )
    config = Qwen3OmniMoeConfig(**TINY_CONFIG)
    model = Qwen3OmniMoeForConditionalGeneration(config).eval()
    std = config.talker_config.initializer_range
    with torch.no_grad():
        for name, parameter in model.talker.named_parameters():
            if ".mlp.experts." in name:  # left uninitialised by transformers (see above)
                parameter.normal_(0.0, std)
    model.save_pretrained(folder)
    # The processor cannot save itself without a video processor (torchvision); its parts can.
    tokenizer.save_pretrained(folder)
    processor.to_json_file(str(folder / "processor_config.json"))
    (folder / "chat_template.jinja").write_text(QWEN3_OMNI_CHAT_TEMPLATE, encoding="utf-8")
