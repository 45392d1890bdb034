"""The host's pip settings, carried into container builds without baking them into a layer.

Reads what `pip config list` and the PIP_* environment give the host's pip (index URLs, local
wheel folders, CA bundle, trusted hosts), writes them as a pip.conf for the `pip.conf` build
secret, and prints the `podman build` arguments that expose it: the secret itself, the CA
bundle as the `pip-ca` secret, and each local folder the settings name bind-mounted read-only
at the same path (`podman build -v`, present for RUN steps only).

    python deploy/podman/pip_settings.py build/podman/pip.conf   # prints one argument a line
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

KEYS = ("index-url", "extra-index-url", "find-links", "trusted-host", "cert")
# Where the Dockerfiles' RUN steps see the CA bundle (`--mount=type=secret,id=pip-ca`).
CA_IN_BUILD = "/run/secrets/pip-ca"


def host_settings(pip: list[str]) -> dict[str, str]:
    """pip's own view, files first, then the environment (which pip lets override them)."""
    listing = subprocess.run(
        [*pip, "config", "list"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    settings: dict[str, str] = {}
    for line in listing.splitlines():
        match = re.match(r"^[^.]*\.([\w-]+)='(.*)'$", line.strip())
        if match and match.group(1) in KEYS:
            settings[match.group(1)] = match.group(2)
    for key in KEYS:
        value = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if value:
            settings[key] = value
    return settings


def local_folders(settings: dict[str, str]) -> list[str]:
    folders: list[str] = []
    for key in ("index-url", "extra-index-url", "find-links"):
        for item in settings.get(key, "").split():
            path = item.removeprefix("file://")
            if path.startswith("/"):
                # An index URL names its simple/ folder: mount the folder above, whose files
                # the index pages link to.
                folder = Path(path).parent if path.rstrip("/").endswith("simple") else Path(path)
                if folder.exists() and str(folder) not in folders:
                    folders.append(str(folder))
    return folders


def main(argv: list[str]) -> int:
    out = Path(argv[1])
    pip = [sys.executable, "-m", "pip"]
    settings = host_settings(pip)
    ca = settings.pop("cert", "")
    lines = ["[global]", *(f"{key} = {value}" for key, value in settings.items())]
    if ca:
        lines.append(f"cert = {CA_IN_BUILD}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out.chmod(0o600)
    print(f"--secret=id=pip.conf,src={out.resolve()}")
    if ca:
        print(f"--secret=id=pip-ca,src={Path(ca).resolve()}")
    for folder in local_folders(settings):
        print(f"--volume={folder}:{folder}:ro")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
