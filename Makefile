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
	$(VENV)/bin/ruff check agent/src lab tests bench scenarios
	$(VENV)/bin/ruff format --check agent/src lab tests bench scenarios
	$(VENV)/bin/mypy
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/ansible-lint -q --profile production playbooks roles

tests: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest -m "not scale"

test: lint tests

bench: $(STAMP)
	$(PY) bench/sim_scale.py
	$(PY) bench/agent_bench.py

# The scale set: every scenario on a 50-host lab, the big ones included, the Swarm2k spec in the
# simulator, then the benchmarks (figures printed, never asserted).
NIGHTLY_LAB_SIZE ?= 50
# A failing scenario does not stop the benchmarks; the target still fails at the end.
nightly: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest scenarios --lab-size $(NIGHTLY_LAB_SIZE) \
		--results-dir results/nightly; status=$$?; \
	$(PY) bench/sim_scale.py && $(PY) bench/agent_bench.py && $(PY) bench/lab_bench.py --sizes 8,50,100 \
		&& exit $$status

LAB_SIZE ?= 8
demo: $(STAMP)
	@echo "== bringing up (or reusing) a $(LAB_SIZE)-host local lab and deploying the agent (ansible-playbook site.yml)"
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/ansible-playbook playbooks/site.yml -e lab_size=$(LAB_SIZE)
	@echo "== headline experiment: 10,000 endpoints in 3 networks, half of them during a halves partition, heal"
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m lab.experiment scenarios/experiments/headline.yaml --inventory inventories/local
	@echo "(the lab stays up for the next run; remove it with: $(VENV)/bin/ansible-playbook playbooks/lab-down.yml)"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
