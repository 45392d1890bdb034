"""Validates Kubernetes objects offline: core kinds against the Kubernetes OpenAPI schemas
shipped by kubernetes-validate (strict: unknown fields fail), custom resources against the
structural schemas in deploy/tools/schemas/.

    python -m deploy.tools.manifests              # every overlay and the standalone jobs
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate

from deploy.tools import kustomize

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = {"gpu": K8S / "overlays" / "gpu", "cpu-tiny": K8S / "overlays" / "cpu-tiny"}
# Manifests applied on their own (kubectl apply -n <namespace> -f), outside the kustomizations.
STANDALONE = (K8S / "jobs" / "prefetch-models.yaml",)
# The oldest Kubernetes the manifests target (the preStop `sleep` action is on by default from
# 1.30; native gRPC probes are GA from 1.27) and the newest schemas available.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
SCHEMAS = Path(__file__).with_name("schemas")
CUSTOM_RESOURCES = {("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.schema.json"}


@cache
def _custom_schema(filename: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / filename).read_text(encoding="utf-8"))
    return schema


def _where(obj: Mapping[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def validate_object(
    obj: Mapping[str, Any], versions: Sequence[str] = KUBERNETES_VERSIONS
) -> list[str]:
    """Problems with one object (empty when valid), each naming the object and the path."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    if key in CUSTOM_RESOURCES:
        validator = jsonschema.Draft202012Validator(_custom_schema(CUSTOM_RESOURCES[key]))
        return [
            f"{_where(obj)}: {'/'.join(map(str, e.path)) or '.'}: {e.message}"
            for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path)))
        ]
    problems = []
    for version in versions:
        try:
            kubernetes_validate.validate(dict(obj), version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{_where(obj)}: no schema for {key[0]} {key[1]} in {version}")
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(map(str, exc.path)) or "."
            problems.append(f"{_where(obj)} (Kubernetes {version}): {path}: {exc.message}")
    return problems


def validate_all(objects: Iterable[Mapping[str, Any]]) -> list[str]:
    return [problem for obj in objects for problem in validate_object(obj)]


def overlay_objects(name: str) -> list[dict[str, Any]]:
    return kustomize.build(OVERLAYS[name])


def standalone_objects() -> list[dict[str, Any]]:
    return [obj for path in STANDALONE for obj in kustomize.load_documents(path)]


def main(argv: Sequence[str] | None = None) -> int:
    del argv
    failed = False
    sources = {f"overlay {name}": (lambda n=name: overlay_objects(n)) for name in OVERLAYS}
    sources["standalone jobs"] = standalone_objects
    for label, load in sources.items():
        objects = load()
        problems = validate_all(objects)
        failed |= bool(problems)
        print(f"{label}: {len(objects)} objects, {len(problems)} problems")
        for problem in problems:
            print(f"  {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
