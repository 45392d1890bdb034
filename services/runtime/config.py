"""Typed service settings with precedence CLI flags > env vars > TOML config file > defaults.

Every capability subclasses `ServiceSettings` and adds its own fields; `load_settings` builds the
command line from the fields themselves, so `--help` always lists every setting with its
description and default, and an invalid value fails at start naming the field.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from services.runtime.threads import OpenMPWaitPolicy

CONFIG_ENV = "MMSERVE_CONFIG"


class ConfigError(Exception):
    """A setting is invalid; the message names the field."""


class _TomlSource(PydanticBaseSettingsSource):
    """Values from the TOML file named by --config or MMSERVE_CONFIG (a table per capability, or
    top-level keys)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None, section: str) -> None:
        super().__init__(settings_cls)
        self._values: dict[str, Any] = {}
        if path is None:
            return
        with path.open("rb") as fh:
            data = tomllib.load(fh)
        # Top-level keys are shared by every capability's table, so only known ones apply; keys
        # in this capability's own table must all be known (a typo fails at start).
        fields = settings_cls.model_fields
        shared = {k: v for k, v in data.items() if not isinstance(v, dict) and k in fields}
        self._values = {**shared, **data.get(section, {})}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


class ServiceSettings(BaseSettings):
    """Settings every capability server shares."""

    model_config = SettingsConfigDict(
        env_prefix="MMSERVE_", extra="forbid", validate_default=True, frozen=True
    )
    # The TOML table that holds this capability's settings ("t2i", "vl", "vision", "omni").
    section: ClassVar[str] = "service"
    _config_path: ClassVar[Path | None] = None

    # --- network ---
    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 in containers.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int | None = Field(
        9090, ge=0, le=65535, description="Prometheus /metrics HTTP port; 0 free, unset off."
    )
    max_message_mb: int = Field(
        64, ge=1, le=2047, description="Max gRPC send/receive message size in MiB."
    )
    keepalive_time_seconds: float = Field(
        30.0, gt=0, description="Interval of server keepalive pings on idle connections."
    )
    keepalive_timeout_seconds: float = Field(
        10.0, gt=0, description="Seconds to wait for a keepalive ack before closing."
    )
    min_client_ping_interval_seconds: float = Field(
        10.0, ge=0, description="Shortest client ping interval accepted without data."
    )
    reflection: bool = Field(True, description="Serve gRPC server reflection (for grpcurl).")
    max_concurrent_calls: int = Field(
        2000,
        ge=0,
        description=(
            "Calls handled at once (health checks and reflection excluded); more get "
            "RESOURCE_EXHAUSTED with a retry hint. 0 removes the limit."
        ),
    )
    # --- executor ---
    max_queue_size: int = Field(
        1000, ge=1, description="Jobs that may wait for the device; more get RESOURCE_EXHAUSTED."
    )
    eta_alpha: float = Field(
        0.2, gt=0, le=1, description="EMA weight of the newest run time in ETA estimates."
    )
    eta_min_samples: int = Field(
        3, ge=1, description="Runs of a job kind before its EMA replaces eta_base_seconds."
    )
    eta_base_seconds: float = Field(5.0, ge=0, description="Run-time estimate before samples.")
    job_retention_seconds: float = Field(
        600.0, ge=0, description="How long finished jobs stay visible to GetJob."
    )
    heartbeat_seconds: float = Field(
        5.0, gt=0, description="Stream heartbeat interval when nothing else is sent."
    )
    drain_grace_seconds: float = Field(
        30.0, ge=0, description="On SIGTERM, time to finish queued and running jobs."
    )
    cpu_workers: int = Field(
        2, ge=1, description="Threads for decode/encode work kept off the device path."
    )
    gil_switch_interval_ms: float = Field(
        1.0,
        gt=0,
        le=100,
        description=(
            "How long a Python thread may hold the GIL while another waits for it (Python's "
            "default is 5 ms). Shorter lets the event loop send a streamed token or accept a "
            "call while the device thread runs Python code between kernels."
        ),
    )
    openmp_wait_policy: OpenMPWaitPolicy = Field(
        "inherit",
        description=(
            "How torch's idle CPU threads wait: passive sleeps (frees cores for decode and gRPC "
            "threads), active spins, inherit keeps OMP_WAIT_POLICY from the environment. "
            "Applied at start, before torch loads; an OMP_WAIT_POLICY in the environment wins."
        ),
    )
    # --- security ---
    api_keys_file: Path | None = Field(
        None, description="File of API keys, one 'key_id:key' (or 'key') per line; enables auth."
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="API keys as 'key_id:key' (env MMSERVE_API_KEYS, comma-separated).",
        repr=False,
    )
    open_probes: bool = Field(
        True,
        description="Health checks and reflection answer without a key (Kubernetes probes, "
        "grpcurl); false makes them need one like every other RPC.",
    )
    rate_limit_per_second: float = Field(
        0.0, ge=0, description="Per-key (or per-peer) token refill rate; 0 turns limiting off."
    )
    rate_limit_burst: int = Field(20, ge=1, description="Token bucket size per key.")
    allowed_uri_prefixes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="URI prefixes the server may fetch media from (e.g. file:///data/); none.",
    )
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest decoded image (width*height) accepted."
    )
    max_image_side: int = Field(16384, ge=1, description="Largest image width or height.")
    # --- model ---
    model: str = Field("", description="Model folder or hub id; empty: the built-in tiny model.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    cache_dir: Path | None = Field(None, description="Hub cache folder (HF_HOME otherwise).")
    allow_download: bool = Field(
        False, description="Let startup download a missing hub model (never at request time)."
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    dtype: str = Field(
        "auto",
        description=(
            "auto (bf16/fp16 on GPU; on CPU a bf16 checkpoint stays bf16 where the CPU has bf16 "
            "instructions, else fp32), bf16, fp16, fp32."
        ),
    )
    attention: str = Field("auto", description="auto (flash_attention_2 if installed, else sdpa).")
    compile: bool = Field(False, description="torch.compile the model; warmed up before SERVING.")
    device_map: str = Field(
        "",
        description=(
            "Split a model too large for one device (accelerate): auto/balanced, "
            "balanced_low_0, sequential, or a JSON module->device map. Empty: whole on `device`."
        ),
    )
    max_memory: str = Field(
        "", description="With device_map: per-device caps, e.g. '0=30GiB,1=30GiB,cpu=64GiB'."
    )
    offload_folder: Path | None = Field(
        None, description="With device_map: folder for layers that fit on no device (disk)."
    )
    # --- tracing ---
    otlp_endpoint: str = Field(
        "",
        description=(
            "OTLP/gRPC collector that receives traces (http://host:4317 plaintext, https:// "
            "TLS; a bare host:port is plaintext). Empty: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or "
            "OTEL_EXPORTER_OTLP_ENDPOINT, else tracing is off (OTEL_SDK_DISABLED=true: off)."
        ),
    )
    trace_service_name: str = Field(
        "", description="service.name of the spans; empty: OTEL_SERVICE_NAME, else mmserve-<cap>."
    )
    trace_sample_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        description=(
            "Share of calls traced when the caller did not decide (a traceparent's sampled flag "
            "wins); unset: OTEL_TRACES_SAMPLER, else every call."
        ),
    )
    # --- logs ---
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level."
    )

    @field_validator("api_keys", "allowed_uri_prefixes", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        # Env vars and CLI flags carry lists as "a,b" or a JSON array.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = cls._config_path
        if path is None and os.environ.get(CONFIG_ENV):
            path = Path(os.environ[CONFIG_ENV])
        # init (CLI flags) > env > TOML > defaults
        return (init_settings, env_settings, _TomlSource(settings_cls, path, cls.section))


S = TypeVar("S", bound=ServiceSettings)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    args = typing.get_args(annotation)
    return isinstance(annotation, types.UnionType) and bool in args and len(args) == 2


def build_parser(
    settings_cls: type[ServiceSettings], prog: str | None = None
) -> argparse.ArgumentParser:
    """A parser whose flags are the settings' fields; unset flags stay out of the result, so env
    vars and the config file still apply."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(settings_cls.__doc__ or "").strip(),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", type=Path, help=f"TOML config file (also env {CONFIG_ENV}).")
    for name, field in settings_cls.model_fields.items():
        env = f"MMSERVE_{name.upper()}"
        default = field.get_default(call_default_factory=True)
        shown = "[]" if default == [] else default
        # argparse formats help with %, so a literal one ("10%") must reach it doubled.
        help_text = f"{field.description} [env {env}; default {shown}]".replace("%", "%%")
        if _is_bool(field.annotation):
            parser.add_argument(
                _flag(name), dest=name, action=argparse.BooleanOptionalAction, help=help_text
            )
        else:
            parser.add_argument(_flag(name), dest=name, metavar=name.upper(), help=help_text)
    return parser


def load_settings(settings_cls: type[S], argv: Sequence[str] | None = None) -> S:
    """Parses flags, then builds the settings with the documented precedence.

    Raises ConfigError naming each invalid field (the caller prints it and exits non-zero)."""
    args = vars(build_parser(settings_cls).parse_args(list(sys.argv[1:] if argv is None else argv)))
    config_path = args.pop("config", None)
    if config_path is not None and not Path(config_path).is_file():
        raise ConfigError(f"config: file not found: {config_path}")
    try:
        settings_cls._config_path = config_path
        return settings_cls(**args)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, SettingsError) as exc:
        raise ConfigError(f"config: {exc}") from None
    finally:
        settings_cls._config_path = None
