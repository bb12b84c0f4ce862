# The two set-up commands in the README: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-e2e lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[offline,test,redis,lint,parquet,metrics,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

# The suite without the long end-to-end tests (several processes, nginx, a browser), in two processes
# (pytest-xdist): about 80 s on 2 cores. The end-to-end tests stay in one, as their timings assume.
test: $(STAMP)
	$(PY) -m pytest -q -m "not e2e" -n 2

# The long end-to-end tests alone.
test-e2e: $(STAMP)
	$(PY) -m pytest -q -m e2e

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
