# Entry points: `make demo` and `make test` (both run `make setup` first).
VENV ?= .venv
PY := $(VENV)/bin/python
export VENV

.PHONY: setup test test-fast test-scale-out test-browser fuzz demo lint format clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not realmodel and not engine and not server"

# The realtime protocol under thousands of random event sequences (make test runs 12).
fuzz: setup
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-2000} $(PY) -m pytest tests/server/test_fuzz.py

# Two servers behind nginx on loopback (docs/deploy.md); installs nginx-light (Debian, root).
test-scale-out: setup
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || \
		(apt-get update -qq && apt-get install -y -qq nginx-light)
	EXPOSST_SCALE_OUT=1 $(PY) -m pytest -m scale_out tests/server/test_scale_out.py tests/server/test_data_parallel.py

# The caption page in headless Chromium (docs/api.md "Listeners"); installs Debian's
# chromium (root). `make test` runs it too where /usr/bin/chromium exists.
test-browser: setup
	@[ -x /usr/bin/chromium ] || (apt-get update -qq && apt-get install -y -qq chromium)
	$(PY) -m pytest -m browser tests/server/test_captions_page.py

# Live simultaneous translation of examples/sentences.en (DEMO_MODEL=tiny-llama: CI form).
demo: setup
	$(PY) -m vllm_exposst.demo

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
