"""A small kustomize: composes the kustomizations under deploy/k8s offline, with no cluster.

The real tool (`kubectl kustomize`) is what operators run; this module implements only the
subset our kustomizations use, so the manifests can be composed and validated by the tests on
any machine with Python. Anything outside the subset fails loudly rather than being ignored:

- resources: files (multi-document YAML) and folders holding a kustomization.yaml;
- namespace: set on every namespaced object;
- labels: `pairs` added to metadata.labels (only includeSelectors/includeTemplates false);
- images: name -> newName / newTag / digest in containers and initContainers;
- configMapGenerator: `files` (key = file name or `key=path`), with kustomize's content-hash
  name suffix, and references from pod volumes renamed to it;
- patches: strategic-merge patches (a mapping) or JSON 6902 patches (a list), from `path` or
  inline `patch`, applied to the objects their `target` selects (kind, name, labelSelector) or,
  for a strategic-merge patch without target, to the object of the patch's own kind and name.

    python -m deploy.tools.kustomize deploy/k8s/overlays/gpu   # prints the composed YAML
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_KNOWN_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "labels",
    "images",
    "configMapGenerator",
    "patches",
}
# Kinds that live outside namespaces (the subset a deployment like ours could meet).
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "APIService",
}
# Strategic-merge keys of the lists we patch: items with the same key value are merged, other
# lists are replaced whole (as Kubernetes' own patchMergeKey metadata says).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}
_PORT_MERGE_KEYS = ("containerPort", "port")  # container ports vs Service ports


class KustomizeError(ValueError):
    """The kustomization uses something outside the supported subset, or is wrong."""


# --- loading ---


def load_documents(path: Path) -> list[Obj]:
    """Every non-empty YAML document of a file, each a Kubernetes object."""
    with path.open(encoding="utf-8") as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "metadata" not in doc:
            raise KustomizeError(f"{path}: every document must be an object with kind/metadata")
    return docs


def kustomization_file(folder: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    raise KustomizeError(f"{folder}: no kustomization.yaml")


def _inside(root: Path, path: Path) -> Path:
    # kustomize's default load restrictor: files must lie under the kustomization's folder
    # (folders of other kustomizations may be anywhere).
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise KustomizeError(f"{path}: outside the kustomization root {root}")
    return resolved


# --- the build ---


def build(folder: Path | str) -> list[Obj]:
    """Composes the kustomization in `folder` and returns its objects (deep copies)."""
    root = Path(folder)
    spec = yaml.safe_load(kustomization_file(root).read_text(encoding="utf-8")) or {}
    unknown = set(spec) - _KNOWN_KEYS
    if unknown:
        raise KustomizeError(f"{root}: unsupported kustomization fields: {sorted(unknown)}")

    objects: list[Obj] = []
    for entry in spec.get("resources", []):
        path = root / entry
        if path.is_dir():
            objects.extend(build(path))
        else:
            objects.extend(load_documents(_inside(root, path)))

    renames: dict[str, str] = {}
    for generator in spec.get("configMapGenerator", []):
        config_map = generate_config_map(root, generator)
        renames[generator["name"]] = config_map["metadata"]["name"]
        objects.append(config_map)

    for patch_entry in spec.get("patches", []):
        apply_patch_entry(root, objects, patch_entry)
    if "namespace" in spec:
        set_namespace(objects, spec["namespace"])
    for label_entry in spec.get("labels", []):
        add_labels(objects, label_entry)
    for image in spec.get("images", []):
        set_image(objects, image)
    rename_config_map_refs(objects, renames)
    _check_unique(objects)
    return objects


def _identity(obj: Mapping[str, Any]) -> tuple[str, str, str, str]:
    meta = obj.get("metadata", {})
    group = obj.get("apiVersion", "").rpartition("/")[0]
    return (group, obj["kind"], meta.get("namespace", ""), meta.get("name", ""))


def _check_unique(objects: Sequence[Obj]) -> None:
    seen: set[tuple[str, str, str, str]] = set()
    for obj in objects:
        ident = _identity(obj)
        if ident in seen:
            raise KustomizeError(f"duplicate object {ident}")
        seen.add(ident)


# --- configMapGenerator ---


def generate_config_map(root: Path, generator: Mapping[str, Any]) -> Obj:
    allowed = {"name", "files", "options"}
    if set(generator) - allowed:
        raise KustomizeError(f"configMapGenerator: unsupported fields {set(generator) - allowed}")
    data: dict[str, str] = {}
    for item in generator.get("files", []):
        key, sep, rel = str(item).partition("=")
        if not sep:
            key, rel = Path(item).name, item
        data[key] = _inside(root, root / rel).read_text(encoding="utf-8")
    options = generator.get("options", {})
    if set(options) - {"disableNameSuffixHash", "labels", "annotations"}:
        raise KustomizeError(f"configMapGenerator options: unsupported {sorted(options)}")
    name = generator["name"]
    config_map: Obj = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": data,
    }
    if options.get("labels"):
        config_map["metadata"]["labels"] = dict(options["labels"])
    if options.get("annotations"):
        config_map["metadata"]["annotations"] = dict(options["annotations"])
    if not options.get("disableNameSuffixHash", False):
        config_map["metadata"]["name"] = f"{name}-{config_map_hash(data)}"
    return config_map


def _go_json(value: Any) -> str:
    # Go's encoding/json: sorted map keys, no spaces, and <, >, &, U+2028/9 escaped.
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (
        ("&", "\\u0026"),
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text


def config_map_hash(data: Mapping[str, str]) -> str:
    """kustomize's ConfigMap name suffix: a change of content rolls the pods that mount it.

    kustomize v5 hashes {"data", "kind", "name"} with the name empty (the generated object has
    no name yet when it is hashed), so only the content counts; checked against kubectl."""
    encoded = _go_json({"data": dict(data), "kind": "ConfigMap", "name": ""})
    digest = hashlib.sha256(encoded.encode("utf-8")).hexdigest()[:10]
    # kustomize avoids vowels and digits that could spell words in the suffix.
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _pod_specs(obj: Obj) -> Iterable[Obj]:
    spec = obj.get("spec", {})
    if obj["kind"] == "Pod":
        yield spec
    elif obj["kind"] == "CronJob":
        yield spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    elif isinstance(spec.get("template"), dict):
        yield spec["template"].get("spec", {})


def rename_config_map_refs(objects: Sequence[Obj], renames: Mapping[str, str]) -> None:
    if not renames:
        return
    for obj in objects:
        for pod in _pod_specs(obj):
            for volume in pod.get("volumes", []):
                ref = volume.get("configMap")
                if ref and ref.get("name") in renames:
                    ref["name"] = renames[ref["name"]]
            for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
                for source in container.get("envFrom", []):
                    ref = source.get("configMapRef")
                    if ref and ref.get("name") in renames:
                        ref["name"] = renames[ref["name"]]


# --- transformers ---


def set_namespace(objects: Sequence[Obj], namespace: str) -> None:
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace


def add_labels(objects: Sequence[Obj], entry: Mapping[str, Any]) -> None:
    if entry.get("includeSelectors") or entry.get("includeTemplates"):
        raise KustomizeError("labels: only includeSelectors/includeTemplates false is supported")
    for obj in objects:
        obj["metadata"].setdefault("labels", {}).update(entry["pairs"])


_IMAGE = re.compile(r"^(?P<name>[^@]+?)(?::(?P<tag>[\w][\w.-]*))?(?:@(?P<digest>.+))?$")


def set_image(objects: Sequence[Obj], image: Mapping[str, Any]) -> None:
    for obj in objects:
        for pod in _pod_specs(obj):
            for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
                match = _IMAGE.match(container.get("image", ""))
                if not match or match["name"] != image["name"]:
                    continue
                name = image.get("newName", match["name"])
                if "digest" in image:
                    container["image"] = f"{name}@{image['digest']}"
                elif "newTag" in image:
                    container["image"] = f"{name}:{image['newTag']}"
                else:
                    rest = f":{match['tag']}" if match["tag"] else ""
                    rest += f"@{match['digest']}" if match["digest"] else ""
                    container["image"] = name + rest


# --- patches ---


def apply_patch_entry(root: Path, objects: Sequence[Obj], entry: Mapping[str, Any]) -> None:
    if set(entry) - {"path", "patch", "target"}:
        raise KustomizeError(f"patches: unsupported fields {sorted(set(entry))}")
    if "path" in entry:
        text = _inside(root, root / entry["path"]).read_text(encoding="utf-8")
    else:
        text = entry["patch"]
    body = yaml.safe_load(text)
    target = entry.get("target")
    if isinstance(body, list):
        if not target:
            raise KustomizeError("a JSON 6902 patch needs a target")
        selected = [o for o in objects if matches(o, target)]
        for obj in selected:
            apply_json6902(obj, body)
    elif isinstance(body, dict):
        if target:
            selected = [o for o in objects if matches(o, target)]
        else:
            selected = [
                o
                for o in objects
                if o["kind"] == body.get("kind")
                and o["metadata"].get("name") == body.get("metadata", {}).get("name")
            ]
        for obj in selected:
            patch = copy.deepcopy(body)
            # A targeted patch applies whatever its own name says (kustomize drops it).
            patch.pop("metadata", None) if target else None
            merged = strategic_merge(obj, patch)
            obj.clear()
            obj.update(merged)
    else:
        raise KustomizeError(f"patch is neither a mapping nor a list: {text[:80]!r}")
    if not selected:
        raise KustomizeError(f"patch selects no object: target={target} body={text[:120]!r}")


def _selector_matches(labels: Mapping[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key.strip()) != value.strip().lstrip("="):
                return False
        elif labels.get(term) is None:
            return False
    return True


def matches(obj: Mapping[str, Any], target: Mapping[str, Any]) -> bool:
    """kustomize's patch target: kind/name/namespace are anchored regexes, plus selectors."""
    allowed = {"group", "version", "kind", "name", "namespace", "labelSelector"}
    if set(target) - allowed:
        raise KustomizeError(f"patch target: unsupported fields {sorted(set(target))}")
    meta = obj.get("metadata", {})
    group, _, version = obj.get("apiVersion", "").rpartition("/")
    fields = {
        "group": group,
        "version": version,
        "kind": obj.get("kind", ""),
        "name": meta.get("name", ""),
        "namespace": meta.get("namespace", ""),
    }
    for key, wanted in target.items():
        if key == "labelSelector":
            if not _selector_matches(meta.get("labels", {}), wanted):
                return False
        elif not re.fullmatch(str(wanted), fields[key]):
            return False
    return True


def _merge_key(field: str, items: Sequence[Any]) -> str | None:
    if field in MERGE_KEYS:
        return MERGE_KEYS[field]
    if field == "ports":
        for key in _PORT_MERGE_KEYS:
            if items and all(isinstance(i, dict) and key in i for i in items):
                return key
    return None


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    """A strategic-merge patch of the shapes Kubernetes uses: maps merge recursively, null
    deletes a key, lists with a merge key merge item by item, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list):
        key = _merge_key(field, [*base, *patch])
        if key is None:
            return copy.deepcopy(patch)
        remaining = copy.deepcopy(base)
        first: list[Any] = []
        for item in patch:
            if not isinstance(item, dict) or key not in item:
                raise KustomizeError(f"{field}: patch item without merge key {key!r}: {item}")
            existing = next((m for m in remaining if m.get(key) == item[key]), None)
            if existing is not None:
                remaining.remove(existing)
            if item.get("$patch") == "delete":
                continue
            first.append(strategic_merge(existing, item, field) if existing else item)
        # kustomize (kyaml) puts the items the patch names first, in the patch's order, then
        # the other items of the original list in their order.
        return copy.deepcopy(first) + remaining
    return copy.deepcopy(patch)


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer must start with '/': {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")[1:]]


def _walk(doc: Any, parts: Sequence[str]) -> Any:
    for part in parts:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def apply_json6902(obj: Obj, operations: Sequence[Mapping[str, Any]]) -> None:
    """RFC 6902 add / replace / remove (the operations our overlays use)."""
    for op in operations:
        parts = _pointer(op["path"])
        parent = _walk(obj, parts[:-1])
        last = parts[-1]
        kind = op["op"]
        try:
            if kind == "add":
                if isinstance(parent, list):
                    index = len(parent) if last == "-" else int(last)
                    parent.insert(index, copy.deepcopy(op["value"]))
                else:
                    parent[last] = copy.deepcopy(op["value"])
            elif kind == "replace":
                key: Any = int(last) if isinstance(parent, list) else last
                if isinstance(parent, dict) and last not in parent:
                    raise KeyError(last)
                parent[key] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            else:
                raise KustomizeError(f"JSON 6902 op {kind!r} is not supported")
        except (KeyError, IndexError) as exc:
            raise KustomizeError(f"JSON 6902 {kind} {op['path']}: no such path") from exc


# --- output ---


def dump(objects: Sequence[Obj]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=True, default_flow_style=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.tools.kustomize",
        description="Render a kustomization folder (the subset of kustomize that deploy/ uses).",
    )
    parser.add_argument("folder", help="folder holding kustomization.yaml")
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(dump(build(args.folder)))
    except (KustomizeError, OSError, yaml.YAMLError) as exc:
        print(f"kustomize: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
