"""Pre-fetch models into the hub cache, for container images and air-gapped hosts.

Services never download at start-up or request time; run this beforehand (at image build time,
or on a host with network access before copying the cache over):

    python -m services.runtime.prefetch --model Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers \\
        --model Qwen/Qwen2.5-VL-7B-Instruct --cache-dir /models/hf

Gated models read the token from HF_TOKEN (or HUGGING_FACE_HUB_TOKEN); HF_ENDPOINT points at a
mirror. A local folder given as --model is only checked and printed. Each model prints one line,
"<model> -> <folder> (<library> <family>)"; the exit status is 1 if any model failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from services.runtime.model_source import (
    ModelNotAvailable,
    ModelSource,
    discover_family,
    resolve_model_dir,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.runtime.prefetch",
        description="Download models into the hub cache so services can start offline.",
    )
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        help="hub id or local folder; repeat for several models",
    )
    parser.add_argument("--revision", default=None, help="branch, tag or commit (all models)")
    parser.add_argument("--cache-dir", default=None, help="hub cache folder (default: HF_HOME's)")
    return parser


def prefetch_one(source: ModelSource) -> tuple[Path, str]:
    """Fetch (or check) one model; returns its folder and "<library> <family>"."""
    folder = resolve_model_dir(source, allow_download=True)
    family = discover_family(folder)
    return folder, f"{family.library} {family.family}"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    failures = 0
    for model in args.model:
        source = ModelSource(model=model, revision=args.revision, cache_dir=args.cache_dir)
        try:
            folder, kind = prefetch_one(source)
        except (ModelNotAvailable, ValueError) as exc:
            # Keep going: one bad id should not hide whether the others are fine.
            failures += 1
            print(f"{source.describe()}: FAILED: {exc}", file=sys.stderr)
            continue
        print(f"{source.describe()} -> {folder} ({kind})", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
