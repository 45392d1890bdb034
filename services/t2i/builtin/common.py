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
