# Two commands set everything up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test bench lint system-deps venv clean help

help:
	@echo "make run    - install what is missing, start broker, Redis, workers, gateway, dashboard and a simulated sale"
	@echo "make test   - install what is missing and run the whole test suite"
	@echo "make bench  - run the benchmarks; writes bench-results.json and docs/BENCHMARKS.md"
	@echo "make lint   - ruff, mypy and the layer contracts (lint-imports)"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "flashsale needs Python 3.11+")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	@# ajv (the JavaScript JSON Schema validator) checks the shipped schemas in the tests
	@if command -v npm >/dev/null 2>&1; then npm install --silent --no-audit --no-fund --prefix $(VENV)/node ajv-cli@5.0.0 >/dev/null; \
	else echo "npm not found: the ajv schema test will fail (apt-get install npm)"; fi
	@touch $(STAMP)

venv: $(STAMP)

system-deps:
	@bash scripts/system-deps.sh

run: venv system-deps
	$(PY) -m flashsale up

test: venv system-deps
	@set +e; $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

bench: venv system-deps
	@command -v wrk >/dev/null 2>&1 || { echo "make bench needs wrk (the HTTP load generator): apt-get install wrk" >&2; exit 1; }
	$(PY) -m bench all

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy schemas kernel streams producers consumers flashsale bench
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .flashsale
