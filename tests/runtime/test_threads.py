"""The OpenMP wait policy setting: applied before torch loads, never over the operator's env."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.runtime.threads import (
    OPENMP_WAIT_ENV,
    apply_gil_switch_interval,
    apply_openmp_wait_policy,
)
from tests.support.servers import start_process

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.delenv(OPENMP_WAIT_ENV, raising=False)


def test_passive_sets_the_environment_before_torch_loads(no_torch: None) -> None:
    applied = apply_openmp_wait_policy("passive")
    assert os.environ[OPENMP_WAIT_ENV] == "PASSIVE"
    assert applied == {"openmp_wait_policy": "PASSIVE", "source": "setting"}


def test_inherit_leaves_the_environment_alone(no_torch: None) -> None:
    applied = apply_openmp_wait_policy("inherit")
    assert OPENMP_WAIT_ENV not in os.environ
    assert applied["source"] == "environment"


def test_an_operator_environment_variable_wins(
    no_torch: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(OPENMP_WAIT_ENV, "ACTIVE")
    applied = apply_openmp_wait_policy("passive")
    assert os.environ[OPENMP_WAIT_ENV] == "ACTIVE"
    assert applied["openmp_wait_policy"] == "ACTIVE"
    assert applied["source"] == "environment"


def test_too_late_once_torch_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(OPENMP_WAIT_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "torch", sys.modules.get("torch") or object())
    applied = apply_openmp_wait_policy("passive")
    assert OPENMP_WAIT_ENV not in os.environ
    assert applied["source"] == "torch loaded first"


def test_gil_switch_interval_is_set_in_milliseconds() -> None:
    before = sys.getswitchinterval()
    try:
        assert apply_gil_switch_interval(0.5) == {"gil_switch_interval_ms": pytest.approx(0.5)}
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    finally:
        sys.setswitchinterval(before)


def test_capability_modules_load_torch_only_with_their_engine() -> None:
    """The policy can only apply if `python -m services.<capability>` has not imported torch by
    the time settings are parsed: the capability modules import their engines lazily."""
    modules = ["services.t2i.capability", "services.vl.capability", "services.omni.capability"]
    modules.append("services.vision.capability")
    code = "import sys, importlib\n"
    code += "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def _cpu_threads_event(log: str) -> dict[str, str]:
    for line in log.splitlines():
        if '"cpu_threads"' in line:
            return dict(json.loads(line))
    raise AssertionError(f"no cpu_threads event in:\n{log}")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, {"openmp_wait_policy": "PASSIVE", "source": "setting"}),
        ({OPENMP_WAIT_ENV: "active"}, {"openmp_wait_policy": "active", "source": "environment"}),
    ],
)
def test_server_start_applies_and_logs_the_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: dict[str, str]
) -> None:
    monkeypatch.delenv(OPENMP_WAIT_ENV, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    server = start_process(
        "tests.support.sleepy_service",
        ["--openmp-wait-policy", "passive", "--gil-switch-interval-ms", "2"],
        tmp_path / "server.log",
    )
    try:
        event = _cpu_threads_event(server.log())
    finally:
        server.stop()
    assert {key: event[key] for key in expected} == expected
    assert event["gil_switch_interval_ms"] == pytest.approx(2.0)
