#!/usr/bin/env bash
# The GPU run (tools/gpu_run.py) on a bare device machine: the wheels in .whl/ (`make wheels`) and the shared harness
# in .seedbench/ (`make seedbench`) travel with it (device tool: carry [".whl", ".seedbench"]). docs/gpu.md.
# Usage: tools/gpu_run.sh [--dry] [--out DIR] [--budget SECONDS] [--steps check harness reproduce cmi]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
source tools/bare_env.sh
exec "$PY" tools/gpu_run.py "$@"
