# Scoped Gossip Lab. `make test` and `make demo` install what they need themselves (root, Debian).
SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test tests lint sim bench nightly demo clean

# Debian packages the lab needs on the controller; installed only when missing (needs root).
APT_PACKAGES := python3 python3-venv openssh-server openssh-client iproute2 nftables util-linux
SYSTEM_STAMP := $(VENV)/.system

$(SYSTEM_STAMP):
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages: $$missing (run as root to install)"; exit 1; fi; \
		echo "installing $$missing (apt)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@mkdir -p $(VENV) && touch $@

$(STAMP): agent/pyproject.toml pyproject.toml $(SYSTEM_STAMP)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e './agent[fast,crypto]' -e '.[test]'
	@# ansible.cfg finds mitogen's strategy here, whatever the Python version of the venv
	ln -sfn "$$($(PY) -c 'import ansible_mitogen, os; print(os.path.dirname(ansible_mitogen.__file__))')/plugins/strategy" $(VENV)/mitogen-strategy
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check agent/src lab tests bench
	$(VENV)/bin/ruff format --check agent/src lab tests bench
	$(VENV)/bin/mypy
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/ansible-lint -q --profile production playbooks roles

tests: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest -m "not scale" tests

test: lint tests

bench: $(STAMP)
	$(PY) bench/sim_scale.py
	$(PY) bench/agent_bench.py

nightly: $(STAMP)
	$(PY) bench/sim_scale.py
	$(PY) bench/agent_bench.py
	$(PY) bench/lab_bench.py --sizes 8,50,100

demo: $(STAMP)
	@echo "The local namespace lab is not built yet; running the headline experiment in the simulator:"
	@echo "30 nodes, 3 overlapping networks, 10,000 endpoints written during a halves partition, then heal."
	$(VENV)/bin/gossip-agent sim --nodes 30 --networks 3 --endpoints 10000 --rate 1000 --delete-fraction 0.2 \
		--partition halves:2s-20s --seed 7 --json results-demo.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
