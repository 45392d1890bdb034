#!/usr/bin/env bash
# Podman on a Debian host, idempotent: the Debian packages (podman, runc, debootstrap,
# podman-compose's runtime needs) and a system-wide containers.conf drop-in that selects runc
# and sets no default ulimits. Hosts that forbid raising resource limits (many CI runners and
# sandboxes) fail every container start with podman's defaults; crun (podman's default
# runtime) fails on them with rlimit and cgroup errors.
set -euo pipefail

# netavark + aardvark-dns: container networks with DNS (Compose service names, pod names).
packages=(podman runc debootstrap netavark aardvark-dns uidmap slirp4netns)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

conf_dir=/etc/containers/containers.conf.d
conf="$conf_dir/50-mmserve.conf"
want='[containers]
default_ulimits = []

[engine]
runtime = "runc"'
if [[ ! -f "$conf" ]] || [[ "$(cat "$conf")" != "$want" ]]; then
  mkdir -p "$conf_dir"
  printf '%s\n' "$want" > "$conf"
fi
podman --version
