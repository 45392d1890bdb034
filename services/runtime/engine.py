"""The contract between the runtime and a capability's engine (the model code, no gRPC)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.runtime.executor import BatchSpec, JobContext


@dataclass(frozen=True)
class EngineInfo:
    """What GetModelInfo reports about the loaded model."""

    family: str
    model_id: str
    architecture: str
    dtype: str
    device: str
    revision: str = ""
    attention_implementation: str = ""
    compiled: bool = False
    capabilities: tuple[str, ...] = ()


@dataclass(frozen=True)
class BatchOperation:
    """An engine operation the executor may coalesce: fn(inputs, contexts) -> outputs."""

    fn: Callable[[list[Any], list[JobContext]], list[Any]]
    spec: BatchSpec


class Engine(ABC):
    """Loads one model on one device and runs jobs on the executor's device thread.

    `load` and `warmup` run once, off the event loop, before the service reports SERVING."""

    @abstractmethod
    def load(self) -> None: ...

    def warmup(self) -> None:
        """Runs a representative job so first requests (and torch.compile) pay no start-up cost."""

    @abstractmethod
    def info(self) -> EngineInfo: ...

    def batch_operations(self) -> dict[str, BatchOperation]:
        """Job kinds the executor may micro-batch, keyed by kind."""
        return {}

    def memory_bytes(self) -> int | None:
        """Device memory in use, for metrics; None when unknown."""
        return None

    def close(self) -> None:
        """Frees the model (process exit does too; this is for tests)."""
