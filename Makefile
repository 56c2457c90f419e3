# Set-up and entry points. `make demo` and `make test` do all set-up on a
# fresh machine: a Python environment in .venv, the control plane and helm
# built from the Go module proxy into ~/.cache/ventros-deploy, a local cluster.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv tools cluster-up cluster-down demo demo-down test test-faults \
	bench bench-quick lint

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

tools:
	tools/build.sh

cluster-up: venv tools
	$(PY) -m testbed up

cluster-down: venv
	$(PY) -m testbed down

demo: venv tools
	$(PY) -m testbed.demo up

demo-down: venv
	$(PY) -m testbed.demo down

test: venv tools
	$(PY) -m pytest -m 'not faults' $(PYTEST_ARGS)

test-faults: venv tools
	$(PY) -m pytest -m faults -p no:randomly $(PYTEST_ARGS)

bench: venv tools
	$(PY) -m bench.run

bench-quick: venv tools
	$(PY) -m bench.run --quick

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
