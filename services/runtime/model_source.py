"""Where a model comes from (a local folder or a hub id) and which family it belongs to.

A service resolves its model once at start-up and never downloads at request time; by default
it only reads the local hub cache (`allow_download=False`), which `python -m
services.runtime.prefetch` fills ahead of time for images and air-gapped hosts. The family is
read from the folder itself (model_index.json for diffusers pipelines, config.json for
transformers models), never from a hand-kept list of model names.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")

Library = Literal["diffusers", "transformers"]


class ModelNotAvailable(FileNotFoundError):
    """The model is neither a local folder nor obtainable from the hub under the given policy."""


@dataclass(frozen=True)
class ModelSource:
    """A model as the operator configured it: a local folder, or a hub id with revision."""

    model: str
    revision: str | None = None
    cache_dir: str | None = None
    # Normally left unset and read from the environment at use; kept out of repr and equality
    # so it never lands in logs, error messages or info RPCs.
    token: str | None = field(default=None, repr=False, compare=False)

    def auth_token(self) -> str | None:
        """The explicit token, else HF_TOKEN, else HUGGING_FACE_HUB_TOKEN (for gated models)."""
        if self.token:
            return self.token
        for name in TOKEN_ENV_VARS:
            value = os.environ.get(name)
            if value:
                return value
        return None

    def local_path(self) -> Path | None:
        """The model's folder when `model` names an existing local directory."""
        path = Path(self.model).expanduser()
        return path if path.is_dir() else None

    def looks_like_path(self) -> bool:
        """True when `model` can only be a filesystem path, never a hub id ("org/name")."""
        text = self.model
        return (
            text.startswith(("/", ".", "~"))
            or "\\" in text
            or text.count("/") > 1
            or os.path.isabs(text)
        )

    def describe(self) -> str:
        return f"{self.model}@{self.revision}" if self.revision else self.model


def resolve_model_dir(source: ModelSource, *, allow_download: bool) -> Path:
    """The local folder holding `source`: the folder itself, or its hub snapshot.

    With `allow_download=False` only the local hub cache is consulted, so a service start never
    touches the network; HF_ENDPOINT (a mirror) and HF_HUB_OFFLINE are honoured by
    huggingface_hub itself.
    """
    local = source.local_path()
    if local is not None:
        return local
    if source.looks_like_path():
        raise ModelNotAvailable(f"model {source.model!r}: no such folder")
    return _snapshot(source, allow_download=allow_download)


def _snapshot(source: ModelSource, *, allow_download: bool) -> Path:
    # Imported here: huggingface_hub is only needed for hub ids, not for local folders.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name = source.describe()
    try:
        folder = snapshot_download(
            repo_id=source.model,
            revision=source.revision,
            cache_dir=source.cache_dir,
            token=source.auth_token(),
            local_files_only=not allow_download,
        )
    except HFValidationError as exc:
        raise ModelNotAvailable(
            f"model {name!r} is neither an existing folder nor a valid hub id: {exc}"
        ) from exc
    except GatedRepoError as exc:
        raise ModelNotAvailable(
            f"model {name!r} is gated: set HF_TOKEN to a token that was granted access"
        ) from exc
    except RevisionNotFoundError as exc:
        raise ModelNotAvailable(f"model {name!r}: revision {source.revision!r} not found") from exc
    except RepositoryNotFoundError as exc:
        raise ModelNotAvailable(
            f"model {name!r} was not found on the hub (or is private: set HF_TOKEN)"
        ) from exc
    except LocalEntryNotFoundError as exc:
        raise ModelNotAvailable(_not_cached_message(source, allow_download, exc)) from exc
    except (OSError, HfHubHTTPError) as exc:  # network failures, HTTP errors, a full disk
        raise ModelNotAvailable(f"model {name!r} could not be fetched: {exc}") from exc
    return Path(folder)


def _not_cached_message(source: ModelSource, allow_download: bool, cause: Exception) -> str:
    where = source.cache_dir or "the default hub cache"
    if allow_download:
        # The hub's own reason says whether it was offline mode, the network or the mirror.
        return (
            f"model {source.describe()!r} is not cached in {where} and could not be "
            f"downloaded: {cause}"
        )
    command = f"python -m services.runtime.prefetch --model {source.model}"
    if source.revision:
        command += f" --revision {source.revision}"
    if source.cache_dir:
        command += f" --cache-dir {source.cache_dir}"
    return (
        f"model {source.describe()!r} is not a local folder and is not cached in {where}; "
        f"downloads are off at start-up, so pre-fetch it first: {command}"
    )


@dataclass(frozen=True)
class ModelFamily:
    """What a model folder holds, read from its own metadata."""

    library: Library
    family: str  # e.g. "stable_diffusion_xl", "hunyuan_dit", "clip", "qwen2_5_vl"
    class_name: str  # pipeline or architecture class, e.g. "QwenImagePipeline"
    model_type: str  # transformers' model_type; for diffusers the same as `family`
    config: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def needs_remote_code(self) -> bool:
        """True for models whose classes live in the folder (`auto_map`), e.g. MiniCPM-o."""
        return "auto_map" in self.config


# Tokens that snake-casing would split wrongly ("HunyuanDiT" -> "hunyuan_di_t").
_NAME_FIXUPS = {
    "DiT": "Dit",
    "PixArt": "Pixart",
    "HiDream": "Hidream",
    "CogView": "Cogview",
    "UNet": "Unet",
}
# Task variants of a pipeline load the same weights as its text-to-image pipeline.
_TASK_SUFFIXES = ("Img2Img", "Inpaint", "Inpainting", "Text2Image", "Text2Img")


def family_from_class_name(class_name: str) -> str:
    """Map a pipeline class to its family, e.g. "StableDiffusionXLImg2ImgPipeline" gives
    "stable_diffusion_xl".

    Generic (strip "Pipeline" and a task suffix, snake-case) so new diffusers pipelines need no
    code change; only names that snake-casing mangles are fixed up.
    """
    stem = class_name.removesuffix("Pipeline")
    for suffix in _TASK_SUFFIXES:
        if stem.endswith(suffix) and stem != suffix:
            stem = stem.removesuffix(suffix)
            break
    return _snake_case(_apply_fixups(stem))


def _apply_fixups(name: str) -> str:
    for wrong, right in _NAME_FIXUPS.items():
        name = name.replace(wrong, right)
    return name


def _snake_case(name: str) -> str:
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)  # "XLImg" -> "XL_Img"
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)  # "StableDiffusion" -> "Stable_Diffusion"
    name = re.sub(r"([A-Za-z])([0-9])", r"\1_\2", name)  # "Diffusion3" -> "Diffusion_3"
    return name.lower()


def discover_family(path: Path) -> ModelFamily:
    """Read the family of the model in `path` from model_index.json or config.json."""
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"model folder {str(folder)!r} does not exist")
    index_file = folder / "model_index.json"
    if index_file.is_file():
        return _diffusers_family(index_file, _read_json(index_file))
    config_file = folder / "config.json"
    if config_file.is_file():
        return _config_family(config_file, _read_json(config_file))
    raise ValueError(
        f"model folder {str(folder)!r} has neither model_index.json (diffusers) nor config.json "
        "(transformers); is it the model's root folder?"
    )


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{str(file)!r} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{str(file)!r} must hold a JSON object")
    return data


def _diffusers_family(file: Path, index: dict[str, Any]) -> ModelFamily:
    class_name = index.get("_class_name")
    if not isinstance(class_name, str) or not class_name:
        raise ValueError(f"{str(file)!r} has no _class_name naming the pipeline")
    family = family_from_class_name(class_name)
    return ModelFamily("diffusers", family, class_name, family, index)


def _config_family(file: Path, config: dict[str, Any]) -> ModelFamily:
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type:
        architectures = config.get("architectures") or []
        class_name = architectures[0] if isinstance(architectures, list) and architectures else ""
        return ModelFamily("transformers", model_type, str(class_name), model_type, config)
    class_name = config.get("_class_name")
    if isinstance(class_name, str) and class_name:
        # A single diffusers model saved on its own (a UNet, a VAE), not a whole pipeline.
        family = _snake_case(_apply_fixups(class_name.removesuffix("Model")))
        return ModelFamily("diffusers", family, class_name, family, config)
    raise ValueError(f"{str(file)!r} has neither model_type (transformers) nor _class_name")
