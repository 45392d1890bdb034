"""The small kustomize (deploy/tools/kustomize.py): its subset on small inputs, and its output
for the real overlays against the real tool (`kubectl kustomize`)."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.tools import kustomize, manifests
from gateway.processes import tool


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return folder


DEPLOYMENT = """
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: web
      labels: {role: capability}
    spec:
      selector: {matchLabels: {app: web}}
      template:
        metadata: {labels: {app: web}}
        spec:
          containers:
          - name: server
            image: mmserve/web
            env:
            - {name: A, value: "1"}
            - {name: B, value: "2"}
            volumeMounts:
            - {name: tmp, mountPath: /tmp}
          volumes:
          - name: tmp
            emptyDir: {}
          - name: conf
            configMap: {name: conf}
    """


def test_strategic_merge_merges_named_lists_and_replaces_others() -> None:
    base = {
        "spec": {
            "containers": [{"name": "a", "env": [{"name": "X", "value": "1"}], "args": ["1"]}],
            "tolerations": [{"key": "old"}],
            "keep": True,
        }
    }
    patch = {
        "spec": {
            "containers": [
                {"name": "a", "env": [{"name": "X", "value": "2"}, {"name": "Y", "value": "3"}]},
                {"name": "b", "image": "i"},
            ],
            "tolerations": [{"key": "new"}],
            "keep": None,
        }
    }
    merged = kustomize.strategic_merge(base, patch)
    a = merged["spec"]["containers"][0]
    assert [c["name"] for c in merged["spec"]["containers"]] == ["a", "b"]
    assert a["env"] == [{"name": "X", "value": "2"}, {"name": "Y", "value": "3"}]
    assert a["args"] == ["1"]
    assert merged["spec"]["tolerations"] == [{"key": "new"}]
    assert "keep" not in merged["spec"]
    assert base["spec"]["containers"][0]["env"] == [{"name": "X", "value": "1"}]  # untouched


def test_strategic_merge_delete_directive() -> None:
    base = {"env": [{"name": "A"}, {"name": "B"}]}
    merged = kustomize.strategic_merge(base, {"env": [{"name": "A", "$patch": "delete"}]})
    assert merged == {"env": [{"name": "B"}]}


def test_json6902_operations_and_missing_paths() -> None:
    obj: dict[str, Any] = {"spec": {"maxReplicas": 4, "list": [1, 2]}}
    kustomize.apply_json6902(
        obj,
        [
            {"op": "replace", "path": "/spec/maxReplicas", "value": 2},
            {"op": "add", "path": "/spec/list/-", "value": 3},
            {"op": "add", "path": "/spec/new~1key", "value": "x"},
            {"op": "remove", "path": "/spec/list/0"},
        ],
    )
    assert obj == {"spec": {"maxReplicas": 2, "list": [2, 3], "new/key": "x"}}
    with pytest.raises(kustomize.KustomizeError, match="no such path"):
        kustomize.apply_json6902(obj, [{"op": "replace", "path": "/spec/absent", "value": 1}])


def test_target_matching() -> None:
    obj = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "t2i",
           "labels": {"app.kubernetes.io/component": "capability", "tier": "gpu"}}}  # fmt: skip
    assert kustomize.matches(obj, {"kind": "Deployment", "name": "t2i|vl"})
    assert not kustomize.matches(obj, {"kind": "Deploy"})  # anchored, not a substring
    assert kustomize.matches(obj, {"labelSelector": "app.kubernetes.io/component=capability"})
    assert not kustomize.matches(obj, {"labelSelector": "tier!=gpu"})
    assert kustomize.matches(obj, {"group": "apps", "version": "v1"})


def test_config_map_hash_matches_kustomize() -> None:
    # `kubectl kustomize` (kustomize v5.5) names a generated ConfigMap with data {k: "hello\n"}
    # cm-94t5b98ck8; the suffix depends on the content only.
    assert kustomize.config_map_hash({"k": "hello\n"}) == "94t5b98ck8"
    assert kustomize.config_map_hash({"k": "hello"}) != "94t5b98ck8"


def test_build_overlay_with_every_supported_field(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "base/deploy.yaml": DEPLOYMENT,
            "base/conf.txt": "x: 1\n",
            "base/kustomization.yaml": """
                resources: [deploy.yaml]
                configMapGenerator:
                - name: conf
                  files: [app.conf=conf.txt]
                """,
            "overlay/gpu.yaml": """
                apiVersion: apps/v1
                kind: Deployment
                metadata: {name: ignored}
                spec:
                  template:
                    spec:
                      containers:
                      - name: server
                        env:
                        - {name: B, value: "20"}
                        - {name: C, value: "3"}
                """,
            "overlay/kustomization.yaml": """
                namespace: prod
                resources: [../base]
                labels:
                - pairs: {team: ml}
                images:
                - {name: mmserve/web, newTag: 1.0-cuda}
                patches:
                - path: gpu.yaml
                  target: {kind: Deployment, labelSelector: role=capability}
                - target: {kind: Deployment, name: web}
                  patch: |-
                    - {op: add, path: /spec/replicas, value: 3}
                """,
        },
    )
    objects = kustomize.build(tmp_path / "overlay")
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    config_map = next(o for o in objects if o["kind"] == "ConfigMap")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["metadata"]["namespace"] == config_map["metadata"]["namespace"] == "prod"
    assert deployment["metadata"]["labels"] == {"role": "capability", "team": "ml"}
    assert deployment["spec"]["replicas"] == 3
    assert pod["containers"][0]["image"] == "mmserve/web:1.0-cuda"
    # As kustomize orders them: the patch's items first, then the others.
    assert pod["containers"][0]["env"] == [
        {"name": "B", "value": "20"},
        {"name": "C", "value": "3"},
        {"name": "A", "value": "1"},
    ]
    assert config_map["data"] == {"app.conf": "x: 1\n"}
    assert config_map["metadata"]["name"].startswith("conf-")
    assert pod["volumes"][1]["configMap"]["name"] == config_map["metadata"]["name"]


@pytest.mark.parametrize(
    ("files", "error"),
    [
        ({"kustomization.yaml": "replicas: []\n"}, "unsupported kustomization fields"),
        ({"kustomization.yaml": "resources: [../outside.yaml]\n"}, "outside the kustomization"),
        (
            {
                "d.yaml": DEPLOYMENT,
                "kustomization.yaml": """
                    resources: [d.yaml]
                    patches:
                    - patch: '{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}}'
                    """,
            },
            "selects no object",
        ),
        (
            {"d.yaml": DEPLOYMENT, "kustomization.yaml": "resources: [d.yaml, d.yaml]\n"},
            "duplicate object",
        ),
    ],
)
def test_build_refuses_what_it_does_not_support(
    tmp_path: Path, files: dict[str, str], error: str
) -> None:
    (tmp_path / "outside.yaml").write_text(textwrap.dedent(DEPLOYMENT))
    write(tmp_path / "k", files)
    with pytest.raises(kustomize.KustomizeError, match=error):
        kustomize.build(tmp_path / "k")


def _by_identity(objects: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {
        (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objects
    }


@pytest.mark.parametrize("overlay", sorted(manifests.OVERLAYS))
def test_overlay_matches_kubectl_kustomize(overlay: str) -> None:
    """The real kustomize (built into kubectl, pinned in requirements-dev.txt as a wheel)
    composes every overlay to exactly the objects the small one does."""
    proc = subprocess.run(
        [tool("kubectl"), "kustomize", str(manifests.OVERLAYS[overlay])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    real = _by_identity([d for d in yaml.safe_load_all(proc.stdout) if d])
    ours = _by_identity(kustomize.build(manifests.OVERLAYS[overlay]))
    assert sorted(ours) == sorted(real)
    for identity, obj in real.items():
        assert ours[identity] == obj, identity
