# cmidd: `make demo` runs the main job, `make test` runs the tests. Both set everything up first.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S := 0.2
export PYTHONUNBUFFERED := 1

.PHONY: setup demo demo-quick test test-fast test-cluster lint clean gpu-check gpu-check-cpu wheels wheels-ray seedbench gpu-run-dry

setup: $(STAMP)

# The venv is created once and reused; it is refreshed when the dependencies change.
# torch/torchvision are pinned in constraints.txt (pip takes them from this machine's disk).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[platform,test]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/cmidd demo --out runs/demo

demo-quick: setup
	$(VENV)/bin/cmidd demo --quick --out runs/demo-quick

test: setup
	$(PY) -m pytest -q --timeout 900

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# A real 2-node Ray cluster (token auth on; the second node under `unshare -m` with its own /tmp and runs/: root
# only) and an mlflow server with basic auth: the README's digits search, best, pull, evaluate, ensemble
# (tests/test_cluster.py). Prints its own wall time.
test-cluster: setup
	@start=$$(date +%s); CMIDD_TEST_CLUSTER=1 $(PY) -m pytest -q -s --timeout 1200 tests/test_cluster.py; rc=$$?; \
	  echo "make test-cluster: exit $$rc, wall time $$(( $$(date +%s) - start )) s"; exit $$rc

lint: setup
	$(PY) -m ruff check platform tests tools

# The GPU readiness check (tools/gpu_check.py): on a CUDA machine with only torch & co., pydantic comes from .whl/.
# `make wheels` once where pip reaches PyPI; `make gpu-check` on the GPU machine; `make gpu-check-cpu` is the dry run.
WHEELS := pydantic pydantic-core annotated-types typing-extensions typing-inspection mlxtend
wheels:
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl $(WHEELS)

# Ray for the GPU machine (tools/ray_parts.py): the ray wheel (79 MB) and what Ray Train imports that the GPU image
# lacks, split into .ray-parts/a and .ray-parts/b (under 50 MiB each, one per device call), the round trip verified.
RAY_WHEELS := ray==2.60.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 \
  rpds-py==2026.9.1 colorful==0.5.8 wcwidth==0.9.4
wheels-ray:
	rm -rf .ray-wheels && python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .ray-wheels $(RAY_WHEELS)
	python3 tools/ray_parts.py split && python3 tools/ray_parts.py verify

# The GPU run (tools/gpu_run.py, four time-boxed steps in about 9 minutes): `make wheels seedbench` here, then on the
# GPU machine `tools/gpu_run.sh` with .whl and .seedbench carried; `make gpu-run-dry` is its CPU dry run.
seedbench:
	rm -rf .seedbench && cp -r ../shared/seedbench .seedbench

gpu-run-dry: setup
	PYTHON=$(PY) tools/gpu_run.sh --dry --out runs/gpu-run-dry

gpu-check:
	tools/gpu_check.sh --device cuda

gpu-check-cpu: setup
	PYTHON=$(PY) tools/gpu_check.sh --device cpu --out runs/gpu-check-cpu

clean:
	rm -rf runs mlflow.db mlruns .pytest_cache
