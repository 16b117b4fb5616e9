#!/usr/bin/env bash
# The GPU check on a bare device machine (python 3.12, torch, torchvision, numpy, pyyaml, scikit-learn; no
# pydantic, ray, mlflow or optuna). pydantic comes from the wheels in .whl/ (`make wheels`, done once where pip
# reaches PyPI). Usage: tools/gpu_check.sh [--device cuda|cpu] [--out DIR]   (default out: $OUT or runs/gpu-check)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import pydantic' 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "gpu_check.sh: pydantic is missing and there are no wheels in .whl/ (run 'make wheels' first)" >&2
    exit 1
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/cmidd-site .whl/*.whl
  export PYTHONPATH=/tmp/cmidd-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/platform${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
exec "$PY" tools/gpu_check.py "$@"
