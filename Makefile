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

demo: setup
	$(VENV)/bin/exposst-decode --model $${DEMO_MODEL:-default} --policy wait-3 \
		--mode exposst --compare recompute --input examples/sentences.en

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
