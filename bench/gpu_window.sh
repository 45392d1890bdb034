#!/usr/bin/env bash
# The GPU plan on a bare GPU machine (bench/RESULTS.md, "A GPU window"): installs the carried
# wheels (make bench-gpu-wheels), checks that the servers import, then runs
# `python -m bench.run --plan gpu` under a 590 s limit. Results go to $OUT (the device tool's
# folder) or bench/results. Extra arguments go to bench.run (e.g. --capabilities vision).
set -euo pipefail
out="${OUT:-bench/results}"
py="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/mmserve-site .whl/*.whl
  export PYTHONPATH="/tmp/mmserve-site"
fi
export PYTHONPATH="$PWD:$PWD/gen/python:$PWD/clients/python${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 MMSERVE_MODEL_CACHE="${MMSERVE_MODEL_CACHE:-/tmp/mmserve-models}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$py" -c "import services.vision.__main__, services.t2i.__main__, services.vl.__main__, bench.run"
mkdir -p "$out"
timeout 590 "$py" -m bench.run --plan gpu --out "$out" "$@" 2>&1 \
  | tee "$out/gpu-run.log"
