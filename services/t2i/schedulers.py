"""Per-request schedulers: any of the pipeline's compatible schedulers, built from its config.

The choice is the pipeline's own `scheduler.compatibles` (the classes diffusers declares
interchangeable for the model), minus those this install cannot build (LMS needs scipy,
DPMSolverSDE torchsde). A job naming one gets a fresh instance made with
`from_config(<configured scheduler>.config)`, exactly what a diffusers user writes, swapped
into the pipeline for the run and swapped back afterwards: schedulers carry per-run state
(timesteps, multistep history), so no instance is shared between jobs that chose differently.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from services.runtime.errors import Violations

log = logging.getLogger("mmserve.t2i.schedulers")


class Schedulers:
    """The schedulers one loaded pipeline can run (the configured one included)."""

    def __init__(self, scheduler: Any | None = None) -> None:
        self.default = type(scheduler).__name__ if scheduler is not None else ""
        self._config = getattr(scheduler, "config", None)
        self._classes: dict[str, type] = {}
        if scheduler is None:
            return
        for cls in [type(scheduler), *getattr(scheduler, "compatibles", ())]:
            try:
                cls.from_config(self._config)
            except Exception as exc:  # a missing optional dependency, an incompatible config
                log.info("scheduler %s is not available: %s", cls.__name__, exc)
                continue
            self._classes[cls.__name__] = cls

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._classes))

    def check(self, name: str, problems: Violations) -> str:
        """`name` when the pipeline can run it ("" for the configured one), else a violation."""
        if not name or name == self.default:
            return ""
        if name not in self._classes:
            problems.add(
                "params.scheduler",
                f"unknown scheduler {name!r}; this model takes {', '.join(self.names)}",
            )
        return name

    @contextmanager
    def using(self, pipes: list[Any], name: str) -> Iterator[None]:
        """`pipes` run with scheduler `name` inside the block ("" leaves them as they are)."""
        if not name:
            yield
            return
        scheduler = self._classes[name].from_config(self._config)
        saved = [pipe.scheduler for pipe in pipes]
        try:
            for pipe in pipes:
                pipe.scheduler = scheduler
            yield
        finally:
            for pipe, original in zip(pipes, saved, strict=True):
                pipe.scheduler = original
