# Quick start: `make demo` (set up + main job) and `make test` (set up + whole test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export HF_HUB_OFFLINE ?= 1

.PHONY: setup setup-pulid demo test lint typecheck bench world-gates clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch 2.13.0 is pinned on purpose: on our machines it is a local CPU wheel; an open range pulls CUDA.
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[dev,faces,app,lowvram]"
	touch $@

setup: $(VENV)/.installed

# The real PuLID encoder's packages (CPU onnxruntime). facexlib and insightface go in without their
# declared dependencies, which would add opencv-python beside opencv-python-headless (README "On a GPU machine").
PULID_NO_DEPS := facexlib==0.3.0 insightface==2.1
setup-pulid: setup
	$(PIP) install -q -e ".[pulid]"
	$(PIP) install -q --no-deps $(PULID_NO_DEPS)

demo: setup
	$(VENV)/bin/idgen generate --id-image src/idgen/world/assets/references/test_000.png \
		--prompt "a person in a snowy forest at night, wearing a red shirt" \
		--mode spatial --out outputs/demo.png --overwrite

world-gates: setup
	$(PY) -m idgen.world.gates --json outputs/world-gates.json

test: setup lint typecheck
	$(VENV)/bin/pytest

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

typecheck: setup
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/step_overhead.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .mypy_cache .ruff_cache
