"""A tiny random-weight Qwen2.5-Omni (thinker, talker and token2wav, the real classes) with the
real Qwen2.5 vocabulary and the Omni special tokens, built once into the model cache. It is the
native omni path's test model: the same loading and generate() code as Qwen/Qwen2.5-Omni-7B,
answers are random. Sizes and ids follow the real config where the tokenizer needs them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.omni.families.qwen_omni import OMNI_CHAT_TEMPLATE, OmniProcessor
from services.runtime.model_cache import cached_model_dir
from services.runtime.tokenizers import qwen_tokenizer

CACHE_NAME = "tiny-qwen2.5-omni"
# After <|endoftext|>, <|im_start|>, <|im_end|>: ids 151646.. as in the real tokenizer_config.
OMNI_SPECIALS = (
    "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|box_end|>", "<|quad_start|>",
    "<|quad_end|>", "<|vision_bos|>", "<|vision_eos|>", "<|vision_pad|>", "<|IMAGE|>",
    "<|VIDEO|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)  # fmt: skip
OMNI_EXTRA_TOKENS = {
    "image_token": "<|IMAGE|>",
    "audio_token": "<|AUDIO|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}
SPEAKERS = {"Chelsie": 151870, "Ethan": 151871}  # name -> talker text bos id (real values)
HIDDEN = 64
_ROPE = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6}  # sum = head/2

TINY_CONFIG: dict[str, Any] = {
    "thinker_config": {
        "text_config": {
            "vocab_size": 152064, "hidden_size": HIDDEN, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rope_parameters": _ROPE, "max_position_embeddings": 4096,
            # At 0.02 the tiny residual stream stays its input embedding and the tied head
            # repeats the last prompt token ("\n") forever; wider weights give varied text.
            "initializer_range": 0.2,
        },
        "vision_config": {
            "depth": 2, "hidden_size": HIDDEN, "intermediate_size": 128, "num_heads": 4,
            "out_hidden_size": HIDDEN, "fullatt_block_indexes": [1],
        },
        "audio_config": {
            "num_mel_bins": 128, "d_model": HIDDEN, "encoder_layers": 2,
            "encoder_attention_heads": 4, "encoder_ffn_dim": 128, "output_dim": HIDDEN,
        },
        # get_rope_index needs vision_start_token_id, which has no default; tying saves 39 MB.
        "vision_start_token_id": 151652, "vision_end_token_id": 151653,
        "tie_word_embeddings": True,
    },
    "talker_config": {
        "vocab_size": 8448, "embedding_size": HIDDEN, "hidden_size": HIDDEN,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "rope_parameters": _ROPE,
        "max_position_embeddings": 4096,
    },
    "token2wav_config": {
        "dit_config": {
            "hidden_size": HIDDEN, "num_hidden_layers": 2, "num_attention_heads": 4,
            "head_dim": 16, "emb_dim": 32, "look_ahead_layers": [1], "look_backward_layers": [0],
            # >= the talker vocabulary: a random talker may emit any codec id
            "num_embeds": 8448, "enc_emb_dim": 16, "enc_dim": 16,
            "enc_channels": [32, 32, 32, 32, 96], "enc_attention_channels": 16,
            "enc_se_channels": 16, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4},
        },
        "bigvgan_config": {
            "upsample_initial_channel": 128, "resblock_kernel_sizes": [3],
            "resblock_dilation_sizes": [[1, 3, 5]],
        },
    },
}  # fmt: skip


def tiny_qwen_omni_dir() -> Path:
    return cached_model_dir(
        CACHE_NAME, {"model": TINY_CONFIG, "speakers": SPEAKERS, "template": 1}, _build
    )


def _build(folder: Path) -> None:
    import torch
    from transformers import (
        Qwen2_5OmniConfig,
        Qwen2_5OmniForConditionalGeneration,
        Qwen2VLImageProcessorPil,
        WhisperFeatureExtractor,
    )

    tokenizer = qwen_tokenizer(OMNI_SPECIALS, OMNI_EXTRA_TOKENS, OMNI_CHAT_TEMPLATE)
    processor = OmniProcessor(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112),
        feature_extractor=WhisperFeatureExtractor(feature_size=128),
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=OMNI_CHAT_TEMPLATE,
    )
    config = Qwen2_5OmniConfig(**TINY_CONFIG)
    model = Qwen2_5OmniForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    # from_pretrained refuses a folder without speakers; each needs the DiT condition, a
    # reference mel for the speaker encoder and the thinker-vocab id opening its text stream.
    dit = config.token2wav_config.dit_config
    speakers = {
        name: {
            "bos_token": bos,
            "cond": torch.randn(dit.enc_emb_dim),
            "ref_mel": torch.randn(1, 40, dit.mel_dim),
        }
        for name, bos in SPEAKERS.items()
    }
    torch.save(speakers, folder / "spk_dict.pt")
    # The processor cannot save itself without a video processor (torchvision); its parts can.
    tokenizer.save_pretrained(folder)
    processor.to_json_file(str(folder / "processor_config.json"))
    (folder / "chat_template.jinja").write_text(OMNI_CHAT_TEMPLATE, encoding="utf-8")
