"""The built-in tiny HunyuanDiT pipeline: DiT, AutoencoderKL, BERT and T5 text encoders with
small vocabularies."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from services.runtime.model_cache import cached_model_dir
from services.t2i.builtin.common import remove_tree, t5_tokenizer, tuples

# Words for the tiny BERT WordPiece vocabulary; unknown words map to [UNK], which is what a
# random-weight model needs (the real checkpoint ships its own 47k-token Chinese/English vocab).
_BERT_TEXT = (
    "a an the of on in with and cat dog fox red blue green white black painting photo "
    "squirrel eating burger house tree sky snow mountain river city night sun"
)
# A small unigram vocabulary for the T5 tokenizer (the real one is mT5's 250k sentencepiece
# model); built directly with the tokenizers library, so sentencepiece is not needed.
_T5_PIECES = ("▁a", "▁the", "▁of", "▁cat", "▁dog", "▁red", "▁blue", "▁in", "▁on", "s", "e")

HUNYUAN_CONFIG: dict[str, Any] = {
    "transformer": {
        "sample_size": 16,
        "num_layers": 2,
        "patch_size": 2,
        "attention_head_dim": 8,
        "num_attention_heads": 3,
        "in_channels": 4,
        "cross_attention_dim": 32,
        "cross_attention_dim_t5": 32,
        "pooled_projection_dim": 16,
        "hidden_size": 24,
        "activation_fn": "gelu-approximate",
    },
    # The pipeline computes its rotary grid as height // 8 // patch_size, so the VAE must
    # downsample by exactly 8: four blocks.
    "vae": {
        "block_out_channels": [8, 8, 16, 16],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 4,
    },
    # BERT's hidden size is the DiT's cross_attention_dim; the pipeline pads prompts to 77.
    "text_encoder": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 37,
        "max_position_embeddings": 128,
    },
    "text_encoder_2": {"d_model": 32, "d_kv": 8, "d_ff": 37, "num_layers": 2, "num_heads": 4},
    "bert_words": _BERT_TEXT.split(),
    "t5_pieces": list(_T5_PIECES),
}


def build_hunyuan_dit(folder: Path, config: Mapping[str, Any] = HUNYUAN_CONFIG) -> None:
    """A HunyuanDiTPipeline with BERT and T5 tokenizers, saved into `folder`."""
    from diffusers import AutoencoderKL, DDPMScheduler, HunyuanDiT2DModel, HunyuanDiTPipeline
    from transformers import BertConfig, BertModel, BertTokenizer, T5Config, T5EncoderModel

    work = folder / "_vocab"
    work.mkdir(parents=True, exist_ok=True)
    vocab = work / "vocab.txt"
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab.write_text("\n".join([*specials, *config["bert_words"]]) + "\n", encoding="utf-8")
    # transformers 5 reads the file from `vocab=`; `vocab_file=` would be silently ignored.
    tokenizer = BertTokenizer(vocab=str(vocab))
    tokenizer_2 = t5_tokenizer(config["t5_pieces"])
    pipe = HunyuanDiTPipeline(
        vae=AutoencoderKL(**tuples(config["vae"])).eval(),
        text_encoder=BertModel(
            BertConfig(vocab_size=len(tokenizer), **config["text_encoder"])
        ).eval(),
        tokenizer=tokenizer,
        transformer=HunyuanDiT2DModel(**config["transformer"]).eval(),
        scheduler=DDPMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        text_encoder_2=T5EncoderModel(
            T5Config(vocab_size=len(tokenizer_2), **config["text_encoder_2"])
        ).eval(),
        tokenizer_2=tokenizer_2,
    )
    pipe.save_pretrained(folder)
    remove_tree(work)


def model_dir(config: Mapping[str, Any] | None = None) -> Path:
    """The built pipeline's folder (cached per config): the `builtin:hunyuan_dit` model."""
    chosen = HUNYUAN_CONFIG if config is None else config
    return cached_model_dir(
        "t2i-tiny-hunyuan_dit", chosen, lambda folder: build_hunyuan_dit(folder, chosen)
    )
