#!/usr/bin/env bash
# The GPU run (tools/gpu_run.py) on a bare device machine: the wheels in .whl/ (`make wheels`) and the shared harness
# in .seedbench/ (`make seedbench`) travel with it (device tool: carry [".whl", ".seedbench", ".ray-parts/b"]), and
# ray as two sets of parts (`make wheels-ray`; .ray-parts/a carried by the call before, tools/ray_parts.py stash),
# joined, verified (sha256) and installed here when ray is missing. docs/gpu.md.
# Usage: tools/gpu_run.sh [--dry] [--out DIR] [--budget SECONDS] [--steps check harness gm reproduce cmi ray]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
source tools/bare_env.sh
if [[ " $* " != *" --dry "* ]] && ! "$PY" -c 'import ray' 2>/dev/null; then
  if ls .ray-parts/*/manifest.json /tmp/cmidd-ray-parts/*/manifest.json >/dev/null 2>&1; then
    # a missing or altered part costs the ray step only (it reports ray as not installed)
    if "$PY" tools/ray_parts.py install --target /tmp/cmidd-ray-site; then
      export PYTHONPATH=/tmp/cmidd-ray-site:$PYTHONPATH
    fi
  else
    echo "gpu_run: ray is not installed and no .ray-parts were carried: the ray step will be skipped" >&2
  fi
fi
exec "$PY" tools/gpu_run.py "$@"
