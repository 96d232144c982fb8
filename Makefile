# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv by itself.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: venv demo smoke test test-fast lint format bench clean

venv: $(STAMP)

# torch==2.13.0 (CPU wheel) goes in first, in its own command: anything that asks for plain
# "torch" before it is present pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH (or run: make PY=python3 ...)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: venv
	$(BIN)/amad compare --config experiments/compare/easyvqa_blip.yaml --out runs/demo

smoke: venv
	$(BIN)/amad compare --config experiments/compare/easyvqa_blip.yaml --out runs/smoke --preset smoke

test: venv
	$(BIN)/python -m pytest tests

# the lint gate of CI: ruff's lint rules and its formatter, configured in pyproject.toml
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test-fast: venv
	$(BIN)/python -m pytest tests -m "not slow"

bench: venv
	$(BIN)/amad bench all --out runs/bench.json

clean:
	rm -rf $(VENV) runs
