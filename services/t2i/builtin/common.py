"""What the built-in pipeline builders share."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def tuples(config: Mapping[str, Any]) -> dict[str, Any]:
    """diffusers model configs take tuples where JSON (and the cache key) has lists."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def t5_tokenizer(pieces: list[str]) -> Any:
    """A T5 tokenizer over a small unigram vocabulary (the real ones are sentencepiece models
    of 32k-250k pieces), built with the tokenizers library, so sentencepiece is not needed."""
    from transformers import T5Tokenizer

    # T5's own special pieces first (pad 0, eos 1, unk 2), then the words, then single
    # characters so any text tokenizes; scores make whole words win over characters.
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(piece, -1.0) for piece in pieces]
    vocab += [(letter, -5.0) for letter in letters if letter not in pieces]
    return T5Tokenizer(vocab=vocab, extra_ids=0)
