"""The contract between the runtime and a capability's engine (the model code, no gRPC)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


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


class Engine(ABC):
    """Loads one model on one device and runs jobs on the executor's device thread.

    `load` and `warmup` run once, on the executor's device thread (the thread every job runs
    on, so torch keeps one OpenMP team), before the service reports SERVING. What each RPC does
    with the engine is the capability's operations' business (services.runtime.operations)."""

    @abstractmethod
    def load(self) -> None: ...

    def warmup(self) -> None:
        """Runs a representative job so first requests (and torch.compile) pay no start-up cost."""

    @abstractmethod
    def info(self) -> EngineInfo: ...

    def memory_bytes(self) -> int | None:
        """Device memory in use, for metrics; None when unknown."""
        return None

    def close(self) -> None:
        """Frees the model (process exit does too; this is for tests)."""
