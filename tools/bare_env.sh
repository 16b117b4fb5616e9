# Sourced by tools/gpu_run.sh and tools/gpu_check.sh: on a bare device machine (python 3.12, torch & co., no
# pydantic/ray/mlflow/optuna) install the wheels carried in .whl/ (`make wheels`, once, where pip reaches PyPI)
# into /tmp/cmidd-site, then put platform/ on the path. Needs: PY (the python), the repository root as cwd.
if ! "$PY" -c 'import pydantic, mlxtend' 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "$(basename "$0"): pydantic or mlxtend is missing and there are no wheels in .whl/ (run 'make wheels' first)" >&2
    exit 1
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/cmidd-site .whl/*.whl
  export PYTHONPATH=/tmp/cmidd-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/platform${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
