"""Code named by "module:name" strings, imported when first needed.

Capabilities name their engine and operations, and built-ins their builders, this way, so that
`--help`, config errors and the start-up settings (threads, OpenMP) never pay for torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def imported(reference: Callable[..., Any] | str) -> Callable[..., Any]:
    """The callable `reference` names ("package.module:name"); a callable is returned as is."""
    if not isinstance(reference, str):
        return reference
    module, _, name = reference.partition(":")
    found: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return found
