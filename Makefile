# Quick start: `make demo` (set up + main job) and `make test` (set up + whole test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test lint typecheck bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch 2.13.0 is pinned on purpose: on our machines it is a local CPU wheel; an open range pulls CUDA.
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[dev,faces]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/idgen generate --flux tiny-random --pulid tiny-random --encoder tiny-random \
		--id-image assets/examples/reference.png --detector none \
		--prompt "a photo of a person on a beach, wearing a red shirt" \
		--mode spatial --width 256 --height 256 --steps 12 --mask-strip --out outputs/demo.png

test: setup lint typecheck
	$(VENV)/bin/pytest

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: setup
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/step_overhead.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .mypy_cache .ruff_cache
