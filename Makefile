# Scoped Gossip Lab. `make test` and `make demo` install what they need themselves (root, Debian).
SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test unit lint sim bench nightly demo clean

$(STAMP): agent/pyproject.toml pyproject.toml
	@command -v $(PYTHON) >/dev/null && $(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { \
		echo "installing python3-venv (apt)"; apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e './agent[fast]' -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check agent/src lab tests bench
	$(VENV)/bin/ruff format --check agent/src lab tests bench
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest -m "not scale and not lab" tests

test: lint unit

bench: $(STAMP)
	$(PY) bench/sim_scale.py
	$(PY) bench/agent_bench.py

nightly: $(STAMP)
	$(PY) -m pytest -m "scale" tests
	$(PY) bench/sim_scale.py

demo: $(STAMP)
	@echo "The local namespace lab is not built yet; running the headline experiment in the simulator:"
	@echo "30 nodes, 3 overlapping networks, 10,000 endpoints written during a halves partition, then heal."
	$(VENV)/bin/gossip-agent sim --nodes 30 --networks 3 --endpoints 10000 --rate 1000 --delete-fraction 0.2 \
		--partition halves:2s-20s --seed 7 --json results-demo.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
