# cryograd: set-up, tests and the demo in a local virtual environment (.venv).
# TORCH_SPEC pins the torch build installed first, so pip does not pull a multi-GB CUDA build on CPU
# machines; override it, e.g. `make test TORCH_SPEC="torch==2.6.0 --index-url ..."`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.cryograd-installed

.PHONY: install test lint demo bench clean gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/cryograd demo --out cryograd-demo

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_projectors.py
	$(BIN)/python benchmarks/bench_reconstruct.py

# On a GPU machine with CUDA torch and Triton already installed (no downloads needed).
gpu-check:
	bash scripts/gpu_check.sh gpu-results

clean:
	rm -rf $(VENV) cryograd-demo .pytest_cache .ruff_cache
