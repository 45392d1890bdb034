#!/usr/bin/env bash
# Contracts only change compatibly: the protos at HEAD must be wire- and JSON-compatible with
# every earlier commit that changed protos/ (each check takes well under a second).
set -euo pipefail
cd "$(dirname "$0")/.."
buf=tools/node_modules/.bin/buf
if ! git rev-parse --verify -q HEAD >/dev/null; then
  echo "breaking: no commits yet"; exit 0
fi
mapfile -t revs < <(git log --format=%H HEAD -- protos | tail -n +2)
if [ "${#revs[@]}" -eq 0 ] && git diff --quiet HEAD -- protos; then
  echo "breaking: no earlier version of the contracts to compare with"; exit 0
fi
# Uncommitted changes are compared with HEAD itself too.
git diff --quiet HEAD -- protos || revs=("$(git rev-parse HEAD)" "${revs[@]}")
for rev in "${revs[@]}"; do
  "$buf" breaking protos --against ".git#ref=${rev},subdir=protos"
done
echo "breaking: compatible with ${#revs[@]} earlier version(s) of protos/"
