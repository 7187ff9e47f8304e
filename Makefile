# Scoped Gossip Lab. `make test` and `make demo` install what they need themselves (root, Debian).
SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test tests lint sim bench nightly demo clean vopr lock

# Debian packages the lab needs on the controller; installed only when missing (needs root).
# (debootstrap builds the systemd lab hosts' Debian root)
APT_PACKAGES := python3 python3-venv openssh-server openssh-client iproute2 iputils-ping nftables util-linux debootstrap
SYSTEM_STAMP := $(VENV)/.system

$(SYSTEM_STAMP): Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages: $$missing (run as root to install)"; exit 1; fi; \
		echo "installing $$missing (apt)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@mkdir -p $(VENV) && touch $@

$(STAMP): agent/pyproject.toml pyproject.toml $(SYSTEM_STAMP)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e './agent[crypto]' -e '.[test]'
	@# ansible.cfg finds mitogen's strategy here, whatever the Python version of the venv
	ln -sfn "$$($(PY) -c 'import ansible_mitogen, os; print(os.path.dirname(ansible_mitogen.__file__))')/plugins/strategy" $(VENV)/mitogen-strategy
	touch $(STAMP)

setup: $(STAMP)

# agent/requirements.lock: the versions the gossip_agent role installs on hosts, resolved afresh
# for the agent with its crypto extra by the system interpreter. Review the diff, then commit.
lock: $(SYSTEM_STAMP)
	rm -rf build/lock-venv && $(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/pip install -q --upgrade pip && build/lock-venv/bin/pip install -q './agent[crypto]'
	{ sed -n '/^#/p' agent/requirements.lock; build/lock-venv/bin/pip freeze --all --exclude gossip-agent \
		| grep -v '^setuptools=='; } > build/requirements.lock && mv build/requirements.lock agent/requirements.lock
	rm -rf build/lock-venv

lint: $(STAMP)
	$(VENV)/bin/ruff check agent/src lab tests bench scenarios
	$(VENV)/bin/ruff format --check agent/src lab tests bench scenarios
	$(VENV)/bin/mypy
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/ansible-lint -q --profile production playbooks roles

tests: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest -m "not scale" --generated-seeds 1-4

test: lint tests

bench: $(STAMP)
	$(PY) bench/sim_scale.py
	$(PY) bench/maelstrom.py
	$(PY) bench/agent_bench.py

# Generated simulator runs (seeded schedules of operations and faults, see docs/design-notes.md):
# `make vopr` sweeps SEEDS (or stops after VOPR_BUDGET seconds); failures are shrunk and written
# with a summary to VOPR_DIR. Small clusters by default; VOPR_NODES=20-40 for bigger ones.
SEEDS ?= 1-10000
VOPR_BUDGET ?= 3600
VOPR_NODES ?= 3-9
VOPR_DIR ?= results/vopr
vopr: $(STAMP)
	$(VENV)/bin/gossip-agent sim --random --seeds $(SEEDS) --node-range $(VOPR_NODES) \
		--time-budget $(VOPR_BUDGET) --traces $(VOPR_DIR)

# The scale set: 10,000 generated seeds (and 500 on 20-40 nodes), every scenario on a 50-host lab,
# the big ones included, the Swarm2k spec in the simulator, then the benchmarks (figures printed,
# never asserted). A failing part does not stop the others; the target still fails at the end.
NIGHTLY_LAB_SIZE ?= 50
nightly: $(STAMP)
	status=0; \
	$(MAKE) vopr SEEDS=1-10000 VOPR_DIR=results/nightly/vopr || status=1; \
	$(MAKE) vopr SEEDS=1-500 VOPR_NODES=20-40 VOPR_DIR=results/nightly/vopr-large || status=1; \
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest scenarios --lab-size $(NIGHTLY_LAB_SIZE) \
		--require-lab --generated-seeds 1-5 --results-dir results/nightly || status=1; \
	$(PY) bench/sim_scale.py && $(PY) bench/agent_bench.py && $(PY) bench/lab_bench.py --sizes 8,50,100 \
		&& exit $$status

LAB_SIZE ?= 8
demo: $(STAMP)
	@echo "== bringing up (or reusing) a $(LAB_SIZE)-host local lab and deploying the agent (ansible-playbook site.yml)"
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/ansible-playbook playbooks/site.yml -e lab_size=$(LAB_SIZE)
	@echo "== headline experiment: 10,000 endpoints in 3 networks, half of them during a halves partition, heal"
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m lab.experiment scenarios/experiments/headline.yaml --inventory inventories/local
	@echo "== data plane: containers on two overlapping VXLAN networks; routes judged by every host's kernel and by pings"
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m lab.overlay --inventory inventories/local
	@echo "(the lab stays up for the next run; remove it with: $(VENV)/bin/ansible-playbook playbooks/lab-down.yml)"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
