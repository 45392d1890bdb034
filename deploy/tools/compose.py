"""Validates deploy/compose/compose.yaml offline against the Compose Specification's JSON
schema, before and after variable interpolation (as `docker compose config` would see it).

The schema is the one check-jsonschema vendors from the compose-spec project
(check_jsonschema/builtin_schemas/vendor/compose-spec.json, Apache-2.0, license beside it in
that package): pinned with the package, no network needed.

    python -m deploy.tools.compose
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "deploy" / "compose" / "compose.yaml"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt}; $$ escapes.
_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


class InterpolationError(ValueError):
    """A required variable (${VAR:?...}) is unset."""


@cache
def compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads((vendor / "compose-spec.json").read_text("utf-8"))
    return schema


def load(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The file as YAML (anchors and merge keys resolved), before interpolation."""
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data


def _substitute(text: str, env: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match["name"] or match["bare"]
        value = env.get(name)
        op, arg = match["op"], match["arg"] or ""
        if op in (":-", "-"):
            unset = value is None or (op == ":-" and value == "")
            return arg if unset else str(value)
        if op in (":?", "?"):
            if value is None or (op == ":?" and value == ""):
                raise InterpolationError(f"{name}: {arg or 'required variable is unset'}")
            return value
        if op in (":+", "+"):
            set_ = value is not None and (op == "+" or value != "")
            return arg if set_ else ""
        return value or ""

    return _VARIABLE.sub(replace, text)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable interpolation over every string of the model."""
    if isinstance(value, str):
        return _substitute(value, env)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def validate(model: Mapping[str, Any]) -> list[str]:
    """Schema problems (empty when valid), each with its path."""
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{'/'.join(map(str, e.path)) or '.'}: {e.message}"
        for e in sorted(validator.iter_errors(model), key=lambda e: list(map(str, e.path)))
    ]


def main(argv: Sequence[str] | None = None) -> int:
    del argv
    raw = load()
    problems = validate(raw)
    problems += [f"(interpolated) {p}" for p in validate(interpolate(raw, dict(os.environ)))]
    print(
        f"{COMPOSE_FILE.relative_to(REPO)}: {len(raw.get('services', {}))} services, "
        f"{len(problems)} problems"
    )
    for problem in problems:
        print(f"  {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
