"""Settings precedence (CLI > env > TOML > defaults), validation and --help."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from services.runtime.config import ConfigError, ServiceSettings, build_parser, load_settings


class DemoSettings(ServiceSettings):
    """Settings of a demo capability."""

    section = "demo"
    max_batch_size: int = Field(8, ge=1, description="Largest batch.")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MMSERVE_PORT", "MMSERVE_MAX_BATCH_SIZE", "MMSERVE_CONFIG", "MMSERVE_API_KEYS"):
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    settings = load_settings(DemoSettings, [])
    assert settings.port == 50051
    assert settings.max_message_mb == 64
    assert settings.max_queue_size == 1000
    assert settings.reflection is True
    assert settings.max_batch_size == 8


def test_precedence_cli_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "mmserve.toml"
    config.write_text(
        "log_level = 'DEBUG'\nport = 1111\n[demo]\nmax_batch_size = 3\nmax_queue_size = 7\n"
        "[other]\nmax_queue_size = 99\n"
    )
    monkeypatch.setenv("MMSERVE_PORT", "2222")
    monkeypatch.setenv("MMSERVE_MAX_BATCH_SIZE", "4")
    settings = load_settings(DemoSettings, ["--config", str(config), "--max-batch-size", "5"])
    assert settings.max_batch_size == 5  # CLI wins over env and file
    assert settings.port == 2222  # env wins over file
    assert settings.max_queue_size == 7  # the capability's own table
    assert settings.log_level == "DEBUG"  # shared top-level keys apply to every capability


def test_config_file_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[demo]\nmax_batch_size = 2\n")
    monkeypatch.setenv("MMSERVE_CONFIG", str(config))
    assert load_settings(DemoSettings, []).max_batch_size == 2


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--max-queue-size", "0"], "max_queue_size"),
        (["--port", "70000"], "port"),
        (["--max-batch-size", "many"], "max_batch_size"),
        (["--log-level", "LOUD"], "log_level"),
    ],
)
def test_invalid_values_name_the_field(argv: list[str], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        load_settings(DemoSettings, argv)


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[demo]\nmax_bach_size = 2\n")
    with pytest.raises(ConfigError, match="max_bach_size"):
        load_settings(DemoSettings, ["--config", str(config)])


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(DemoSettings, ["--config", "/nonexistent/mmserve.toml"])


def test_lists_from_env_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSERVE_API_KEYS", "ci:secret-one, bare-secret")
    settings = load_settings(DemoSettings, ["--allowed-uri-prefixes", '["file:///data/"]'])
    assert settings.api_keys == ["ci:secret-one", "bare-secret"]
    assert settings.allowed_uri_prefixes == ["file:///data/"]
    assert "secret" not in repr(settings)


def test_help_lists_every_field() -> None:
    text = build_parser(DemoSettings).format_help()
    for name in DemoSettings.model_fields:
        assert "--" + name.replace("_", "-") in text
    assert "MMSERVE_MAX_BATCH_SIZE" in text
    assert "--no-reflection" in text
