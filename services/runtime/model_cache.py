"""A cache of locally built tiny models (real architectures, random weights).

No machine here reaches a model hub, so tests and the default local run build small models with
the real classes, save them with `save_pretrained`, and load them back through the same code
path as real checkpoints. Building takes seconds; this cache makes it happen once per config.

The folder name carries a hash of (name, config, BUILDER_VERSION), so changing a config or the
builders yields a fresh folder instead of a stale one. A `.complete` marker, an atomic rename
and an fcntl lock make concurrent builders (pytest-xdist workers, several services starting
together) safe: one builds, the others wait and reuse its result.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Bump when builders change in a way the config does not show (e.g. a new tokenizer file).
BUILDER_VERSION = 1
CACHE_ENV_VAR = "MMSERVE_MODEL_CACHE"
COMPLETE_MARKER = ".complete"
BUILD_SEED = 0

_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_REPO_ROOT = Path(__file__).resolve().parents[2]


def default_cache_root() -> Path:
    """MMSERVE_MODEL_CACHE if set, else <repo>/models-cache (git-ignored)."""
    configured = os.environ.get(CACHE_ENV_VAR)
    return Path(configured).expanduser() if configured else _REPO_ROOT / "models-cache"


def cache_key(name: str, config: Mapping[str, Any]) -> str:
    """sha256 hex of the name, the canonical JSON of the config and BUILDER_VERSION."""
    payload = {"builder_version": BUILDER_VERSION, "config": config, "name": name}
    return hashlib.sha256(_canonical_json(payload).encode("utf-8")).hexdigest()


def _canonical_json(value: Any) -> str:
    # sort_keys and fixed separators: the same config always hashes the same, whatever the
    # insertion order. Unknown types fail loudly rather than hashing an unstable repr().
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"model cache config values must be JSON-like, not {type(value).__name__}")


def cached_model_dir(
    name: str,
    config: Mapping[str, Any],
    build: Callable[[Path], None],
    *,
    root: Path | None = None,
) -> Path:
    """The folder of model `name` built from `config`, building it with `build` if needed.

    `build(folder)` writes the model into an empty folder; it runs with torch seeded, so the
    random weights are the same on every machine. The returned folder is complete and never
    changes afterwards.
    """
    if not _NAME_PATTERN.fullmatch(name):
        raise ValueError(f"model cache name {name!r} must be letters, digits, '.', '_' or '-'")
    base = Path(root) if root is not None else default_cache_root()
    slug = f"{name}-{cache_key(name, config)[:12]}"
    final = base / slug
    if (final / COMPLETE_MARKER).is_file():
        return final
    base.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(base / f".{slug}.lock"):
        # Whoever held the lock before us may have finished the very same build.
        if (final / COMPLETE_MARKER).is_file():
            return final
        _remove_leftovers(base, slug, final)
        _build_atomically(base, slug, final, build, name, config)
    return final


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    # flock is released by the kernel if the holder dies, so a crashed build never wedges the
    # cache. The lock file stays: deleting it would let a waiter and a newcomer lock different
    # inodes.
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remove_leftovers(base: Path, slug: str, final: Path) -> None:
    # Only reachable under the lock, so no live builder owns these: they are from a crash.
    for stale in base.glob(f".{slug}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if final.exists():
        logger.warning("model cache: removing incomplete folder %s", final)
        shutil.rmtree(final)


def _build_atomically(
    base: Path,
    slug: str,
    final: Path,
    build: Callable[[Path], None],
    name: str,
    config: Mapping[str, Any],
) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{slug}.tmp-", dir=base))
    try:
        logger.info("model cache: building %s in %s", name, final)
        _seeded_build(build, staging)
        marker = {"name": name, "config": config, "builder_version": BUILDER_VERSION}
        (staging / COMPLETE_MARKER).write_text(_canonical_json(marker) + "\n", encoding="utf-8")
        # Same filesystem (a sibling of `final`), so the rename is atomic: readers see either
        # no folder or a complete one.
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _seeded_build(build: Callable[[Path], None], folder: Path) -> None:
    # torch is imported only on this slow path: a cache hit should not pay for it.
    import torch

    # fork_rng puts the caller's RNG state back afterwards, so building a model in the middle
    # of a test does not change the random numbers the test draws next.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BUILD_SEED)
        build(folder)
