#!/usr/bin/env bash
# The GPU check (tools/gpu_check.py) on a bare device machine; pydantic comes from the wheels in .whl/ (`make wheels`).
# Usage: tools/gpu_check.sh [--device cuda|cpu] [--out DIR]   (default out: $OUT or runs/gpu-check)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
source tools/bare_env.sh
exec "$PY" tools/gpu_check.py "$@"
