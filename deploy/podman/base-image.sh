#!/usr/bin/env bash
# The local stand-in for the public python:3.11-slim base where no container registry can be
# reached: a minimal Debian bookworm (Python 3.11 from Debian, venv support, CA certificates)
# bootstrapped from the Debian archive and imported as an image. Idempotent: skipped when the
# image exists.
set -euo pipefail
image="${1:-localhost/debian-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if podman image exists "$image"; then
  echo "$image exists"
  exit 0
fi
root="$(mktemp -d /var/tmp/mmserve-debootstrap.XXXXXX)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$root" "$mirror"
# apt lists and the package cache are rebuilt by whoever installs packages later.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
tar -C "$root" -c . | podman import \
  --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' - "$image"
podman image ls "$image"
