"""Every command a user is told to run answers `--help` with a usage text and exit status 0.

The entry points are collected from what the documents tell people to type (`python -m ...` in
README.md and docs) and from every package with a `__main__`, so a new command is covered the day
it is documented. Each runs in a fresh interpreter as a user would start it: an argparse help text
with a stray `%`, or a module that ignores `--help` and does its work instead, fails here.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mmserve_client.cli import build_parser

ROOT = Path(__file__).resolve().parents[3]
DOCUMENTS = ("README.md", "docs", "deploy/README.md", "gateway/README.md", "bench", "tests")
SOURCE_TREES = ("services", "gateway", "deploy", "bench", "clients/python")
# Modules of other projects that the documents mention (pip, protoc).
FOREIGN = ("pip", "grpc_tools")
# A placeholder such as `python -m services.<capability>` is not a module name.
MODULE_RE = re.compile(
    r"python3? -m ((?:[A-Za-z_][A-Za-z0-9_]*\.)*[A-Za-z_][A-Za-z0-9_]*)(?![.<\w])"
)


def _documented_modules() -> set[str]:
    modules: set[str] = set()
    for entry in DOCUMENTS:
        path = ROOT / entry
        files = [path] if path.is_file() else sorted(path.rglob("*.md"))
        for file in files:
            modules.update(MODULE_RE.findall(file.read_text(encoding="utf-8")))
    return {m for m in modules if m.split(".")[0] not in FOREIGN}


def _main_packages() -> set[str]:
    modules: set[str] = set()
    for tree in SOURCE_TREES:
        base = ROOT / tree
        for main in base.rglob("__main__.py"):
            package = main.parent
            root = ROOT / "clients/python" if tree == "clients/python" else ROOT
            modules.add(".".join(package.relative_to(root).parts))
    return modules


ENTRY_POINTS = sorted(_documented_modules() | _main_packages())


def test_entry_points_are_found() -> None:
    # The discovery itself must not silently find nothing.
    for expected in ("services.t2i", "services.vl", "services.vision", "services.omni"):
        assert expected in ENTRY_POINTS
    for expected in ("gateway.stack", "bench.run", "mmserve_client"):
        assert expected in ENTRY_POINTS


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_module_help(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"`python -m {module} --help` failed:\n{done.stderr[-3000:]}"
    assert "usage:" in done.stdout, f"`python -m {module} --help` printed no usage:\n{done.stdout}"
    assert "Traceback" not in done.stderr


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = sub
                found.update({f"{name} {k}": v for k, v in _subcommands(sub).items()})
    return found


COMMANDS = sorted(_subcommands(build_parser()))


def test_cli_has_commands() -> None:
    assert {"generate", "ask", "chat", "say", "embed", "health", "info"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_command_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command.split(), "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mmserve"), out


def test_cli_help_in_a_fresh_process() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mmserve_client", "say", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: mmserve say")
