#!/usr/bin/env bash
# Builds the CPU images with podman: the shared base, one image per capability, the edge
# service, Envoy and the OpenAI-compatible gateway, tagged localhost/mmserve/<name>:<tag>.
# Layer caching: a code change rebuilds the base's last layers and the thin images above it.
#   MMSERVE_BASE_IMAGE  the Python base (default: the Debian base bootstrapped here)
#   MMSERVE_TAG         image tag (default 0.1.0)
#   MMSERVE_IMAGES      which images (default: all)
set -euo pipefail
cd "$(dirname "$0")/../.."
python="${PYTHON:-.venv/bin/python}"
base_image="${MMSERVE_BASE_IMAGE:-localhost/debian-base:bookworm}"
tag="${MMSERVE_TAG:-0.1.0}"
prefix=localhost/mmserve
images="${MMSERVE_IMAGES:-t2i vl vision omni edge envoy openai}"

mapfile -t pip_args < <("$python" deploy/podman/pip_settings.py build/podman/pip.conf)
# docker format: OCI image configs have no HEALTHCHECK, podman drops it without it.
common=(--format docker --layers --network host "${pip_args[@]}")

build() {  # dockerfile tag [extra podman build arguments]
  local file="$1" name="$2"
  shift 2
  echo "=== $name ($file)"
  local start=$SECONDS
  podman build "${common[@]}" -f "$file" --ignorefile "$file.dockerignore" -t "$name" "$@" .
  echo "=== $name built in $((SECONDS - start)) s"
}

build deploy/docker/Dockerfile.base "$prefix/base:$tag-cpu" \
  --build-arg BASE_IMAGE="$base_image" \
  --build-arg TORCH_VARIANT=cpu \
  --build-arg TORCH_SPEC=torch==2.13.0+cpu \
  --build-arg TORCH_INDEX_URL=
for target in t2i vl vision omni edge openai; do
  [[ " $images " == *" $target "* ]] || continue
  build deploy/docker/Dockerfile "$prefix/$target:$tag-cpu" --target "$target" \
    --build-arg BASE_IMAGE="$prefix/base:$tag-cpu"
done
if [[ " $images " == *" envoy "* ]]; then
  build deploy/docker/Dockerfile.envoy "$prefix/envoy:$tag" --target envoy-wheel \
    --build-arg PYTHON_IMAGE="$base_image"
fi
podman image ls --filter "reference=$prefix/*"
