"""Every curl example of docs/openai.md, run as written against the live stack."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from gateway.processes import REPO
from gateway.stack import Stack

DOC = REPO / "docs" / "openai.md"
BLOCKS = [b for b in re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S) if "curl" in b]


def test_the_doc_has_curl_examples() -> None:
    assert len(BLOCKS) >= 6


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Shared by the blocks in order: the edit example uses the image the generation saved.
    return tmp_path_factory.mktemp("curl")


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_curl_example(openai_stack: Stack, workdir: Path, index: int) -> None:
    block = BLOCKS[index]
    env = {**os.environ, "MMSERVE_URL": openai_stack.url}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{block}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    out = done.stdout.strip()
    if out.startswith("{"):
        assert "error" not in json.loads(out)
    elif out.startswith("data:"):
        assert out.endswith("data: [DONE]")
