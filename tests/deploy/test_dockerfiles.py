"""Dockerfiles: hadolint (the real linter) and the project's explicit rules, on the real files
and on bad ones that each rule must catch. No Docker engine exists here: nothing is built."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from deploy.tools import dockerfiles
from tests.deploy.conftest import CAPS

REPO = dockerfiles.REPO


def test_real_dockerfiles_pass_every_check() -> None:
    assert dockerfiles.check_all() == []


def test_hadolint_runs_and_catches_problems(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install -y curl\n")
    code, output = dockerfiles.hadolint([bad])
    assert code != 0
    assert "DL3006" in output  # untagged base image
    assert "DL3008" in output  # unpinned apt package


def parse_text(tmp_path: Path, text: str, name: str = "Dockerfile") -> dockerfiles.Dockerfile:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return dockerfiles.parse(path)


def test_explicit_rules_catch_violations(tmp_path: Path) -> None:
    bad = parse_text(
        tmp_path,
        """
        ARG IMG=python:latest
        FROM ${IMG} AS build
        RUN pip install x==1
        FROM ubuntu AS runtime
        ADD https://example.invalid/x.tgz /x
        COPY no-such-dir /app
        RUN apt-get install -y gcc
        """,
    )
    problems = [
        *dockerfiles.check_pinned_bases(bad),
        *dockerfiles.check_common(bad, context=tmp_path),
        *dockerfiles.check_base(bad),
    ]
    text = "\n".join(problems)
    assert "'python:latest' is not pinned" in text
    assert "'ubuntu' is not pinned" in text
    assert "ADD" in text
    assert "no-such-dir not found" in text
    assert "no USER" in text
    assert "copies nothing from the build stage" in text
    assert "build tooling in the runtime stage" in text


def test_root_user_and_missing_healthcheck_are_caught(tmp_path: Path) -> None:
    root = parse_text(tmp_path, "FROM ubuntu:24.04\nUSER root\n")
    assert dockerfiles.check_user(root, root.stages[-1])
    named = parse_text(tmp_path, "FROM ubuntu:24.04\nUSER mmserve\n")
    assert dockerfiles.check_user(named, named.stages[-1])  # not verifiable by runAsNonRoot
    targets = parse_text(
        tmp_path, "FROM b AS t2i\nCMD x\nFROM b AS vl\nHEALTHCHECK CMD true\nCMD x\n"
    )
    problems = "\n".join(dockerfiles.check_capabilities(targets))
    assert "t2i has no grpc.health.v1 HEALTHCHECK" in problems
    assert "vl has no grpc.health.v1 HEALTHCHECK" in problems
    assert "no stage 'vision'" in problems


def test_parser_joins_continuations_and_skips_comments(tmp_path: Path) -> None:
    parsed = parse_text(
        tmp_path,
        """
        # comment
        FROM a:1 AS one
        ENV A=1 \\
            # inside
            B="two words"
        RUN echo \\
          hi
        """,
    )
    (stage,) = parsed.stages
    assert stage.env() == {"A": "1", "B": "two words"}
    assert stage.all("RUN")[0].args == "echo hi"


@pytest.mark.parametrize("name", sorted(CAPS))
def test_capability_targets_match_settings(name: str) -> None:
    facts = CAPS[name]
    stage = dockerfiles.parse(dockerfiles.DOCKERFILES[1]).stage(name)
    env = stage.env()
    assert int(env["MMSERVE_PORT"]) == facts.port
    assert int(env["MMSERVE_METRICS_PORT"]) == facts.metrics_port
    assert env["MMSERVE_HEALTH_SERVICE"] == facts.service
    assert stage.all("EXPOSE")[0].args.split() == [str(facts.port), str(facts.metrics_port)]
    assert json.loads(stage.all("CMD")[0].args) == ["python", "-m", f"services.{name}"]
    assert (REPO / "services" / name).is_dir()


def test_base_runs_as_the_uid_the_manifests_use() -> None:
    base = dockerfiles.parse(dockerfiles.DOCKERFILES[0])
    assert dockerfiles.final_user(base, base.stages[-1]) == "10001:10001"
    env = base.stages[-1].env()
    assert env["MMSERVE_HOST"] == "0.0.0.0"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["MMSERVE_MODEL_CACHE"].startswith("/cache/")


def test_bake_file_builds_every_target_from_these_dockerfiles() -> None:
    bake = json.loads((REPO / "deploy" / "docker" / "docker-bake.json").read_text())
    targets = bake["target"]
    capability = dockerfiles.parse(dockerfiles.DOCKERFILES[1])
    stage_names = {s.name for s in capability.stages}
    for group in bake["group"].values():
        assert set(group["targets"]) <= set(targets) | set(bake["group"])
    for name, target in targets.items():
        assert (REPO / target["dockerfile"]).is_file(), name
        assert target["context"] == "."
        if "target" in target:
            assert target["target"] in stage_names
        for context in target.get("contexts", {}).values():
            assert context.removeprefix("target:") in targets
    for name in CAPS:
        for variant in ("cuda", "cpu"):
            target = targets[f"{name}-{variant}"]
            assert target["target"] == name
            assert target["tags"] == [f"${{REGISTRY}}/{name}:${{TAG}}-{variant}"]
            assert target["contexts"] == {"mmserve-base": f"target:base-{variant}"}
