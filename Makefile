# Entry points: `make demo` and `make test` (both run `make setup` first).
VENV ?= .venv
PY := $(VENV)/bin/python
export VENV

.PHONY: setup test test-fast demo lint format clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not realmodel and not engine and not server"

# Live simultaneous translation of examples/sentences.en (DEMO_MODEL=tiny-llama: CI form).
demo: setup
	$(PY) -m vllm_exposst.demo

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
