# Quick start: `make demo` (set up + main job) and `make test` (set up + whole test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export HF_HUB_OFFLINE ?= 1

.PHONY: setup setup-pulid demo test lint typecheck bench world-gates world-gates-retrain world-gates-seed world-multi-gates world-likeness-ceiling world-readme clean

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

# The reference and prompt follow the README's rule (`python -m idgen.world.gates --demo-pick
# docs/world-gates.json`; a test keeps them equal).
demo: setup
	$(VENV)/bin/idgen generate --id-image src/idgen/world/assets/references/test_004.png \
		--prompt "a close-up photo of a person in a garden in cool light, wearing a purple shirt, on the right" \
		--mode spatial --compare-id-weight 2 --out outputs/demo.png --overwrite

# Each gates run rewrites its summary, then the README blocks made from it (`world-readme`).
world-gates: setup
	$(PY) -m idgen.world.gates --json docs/world-gates.json
	$(PY) -m idgen.world.readme --readme README.md

# The identity adapter retrained with its recipe's first other seeds on a copy of the shipped assets (about
# 35 minutes on one CPU thread), then gated like the shipped one.
RETRAIN := outputs/world-retrain
world-gates-retrain: setup
	test -d $(RETRAIN)/assets || (mkdir -p $(RETRAIN) && rm -rf $(RETRAIN)/assets.tmp \
		&& cp -r src/idgen/world/assets $(RETRAIN)/assets.tmp && mv $(RETRAIN)/assets.tmp $(RETRAIN)/assets)
	$(VENV)/bin/idgen world train --stage adapter --adapter-seed 1 --work $(RETRAIN) --assets $(RETRAIN)/assets
	$(PY) -m idgen.world.gates --assets $(RETRAIN)/assets --json docs/world-gates-retrain.json
	$(PY) -m idgen.world.readme --readme README.md

# The whole world retrained from scratch with every recipe's first other seeds (`--seed 1`; about 90 minutes
# on two CPU threads), then gated like the shipped one. The evaluators are the measuring instrument: the
# shipped ones are copied in, so both worlds are measured by the same weights.
SEED_RUN := outputs/world-seed-1
world-gates-seed: setup
	test -d $(SEED_RUN)/assets/evaluators || (mkdir -p $(SEED_RUN)/assets && rm -rf $(SEED_RUN)/evaluators.tmp \
		&& cp -r src/idgen/world/assets/evaluators $(SEED_RUN)/evaluators.tmp \
		&& mv $(SEED_RUN)/evaluators.tmp $(SEED_RUN)/assets/evaluators)
	$(VENV)/bin/idgen world train --seed 1 --threads 2 --work $(SEED_RUN)/work --assets $(SEED_RUN)/assets \
		--stage identity base two-people wplus pidiff adapter
	$(PY) -m idgen.world.gates --assets $(SEED_RUN)/assets --json docs/world-gates-seed-1.json
	$(PY) -m idgen.world.readme --readme README.md

world-multi-gates: setup
	$(PY) -m idgen.world.multi_gates --json docs/world-multi-gates.json
	$(PY) -m idgen.world.readme --readme README.md

# Where the likeness is lost: each held-out person's attributes through the VAE, a base fine-tuned on them,
# fitted cross-attentions, free id tokens and the shipped adapter (29 minutes on two threads of the 2-core CPU).
world-likeness-ceiling: setup
	$(PY) -m idgen.world.ceiling --threads 2 --json docs/world-likeness-ceiling.json
	$(PY) -m idgen.world.readme --readme README.md

# The README's gates tables and lists, regenerated from the gates summaries in docs/.
world-readme: setup
	$(PY) -m idgen.world.readme --readme README.md

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
