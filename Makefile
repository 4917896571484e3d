# The README's two commands are `make run` (main job) and `make test` (the suite); both set up first.
VENV ?= .venv
PY := $(VENV)/bin/python
SMOL := $(VENV)/bin/smol

.PHONY: setup run test lint format bench serve clean

setup:
	@bash scripts/setup.sh

run: setup
	$(SMOL) run ablation

test: setup
	@bash scripts/setup-test-deps.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -n auto --maxprocesses=4 --dist loadgroup

lint: setup
	$(VENV)/bin/ruff check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) benchmarks/generate.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/data.py --tokenizer bpe-8k
	@if $(PY) -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then $(PY) benchmarks/gpu.py; else echo "bench: no CUDA device, skipping benchmarks/gpu.py"; fi

serve: setup
	$(SMOL) serve

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
