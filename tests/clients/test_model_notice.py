"""A built-in model with random weights says so: GetModelInfo's random_weights and notice, the
SDK's ModelInfo, `mmserve info` and the note `mmserve generate` prints after its images."""

from __future__ import annotations

from pathlib import Path

from mmserve_client import T2IClient, VisionClient
from tests.clients.helpers import run_cli
from tests.clients.servers import Served


def test_model_info_flags_random_weights(t2i_server: Served, vision_server: Served) -> None:
    for cls, server in ((T2IClient, t2i_server), (VisionClient, vision_server)):
        with cls(server.target) as client:
            model = client.info().model
        assert model.random_weights, model
        assert "random weights" in model.notice
        assert "--model" in model.notice
        assert model.model_id.endswith("(built-in, random weights)")


def test_cli_tells_the_person_why_images_are_noise(t2i_server: Served, tmp_path: Path) -> None:
    target = ("--target", t2i_server.target)
    info = run_cli("info", "t2i", *target)
    assert info.code == 0, info.stderr
    assert "notice: This t2i service runs a built-in model with random weights" in info.stdout
    done = run_cli(
        "generate", "a red fox", "--steps", "1", "--no-stream", "-o", str(tmp_path / "fox"), *target
    )
    assert done.code == 0, done.stderr
    assert "note: This t2i service runs a built-in model with random weights" in done.stderr
    quiet = run_cli(
        "-q", "generate", "a red fox", "--steps", "1", "--no-stream", "-o", str(tmp_path / "q"),
        *target,
    )  # fmt: skip
    assert "random weights" not in quiet.stderr
