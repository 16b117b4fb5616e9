# cmidd: `make demo` runs the main job, `make test` runs the tests. Both set everything up first.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled
export MLFLOW_DISABLE_TELEMETRY := true
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S := 0.2
export PYTHONUNBUFFERED := 1

.PHONY: setup demo demo-quick test test-fast lint clean

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

lint: setup
	$(PY) -m ruff check platform tests

clean:
	rm -rf runs mlflow.db mlruns .pytest_cache
