"""site.yml from nothing on an 8-host namespace lab, a no-change re-run, host checks, lab-down.

Uses its own prefix, subnet and inventory, so a demo lab on the same machine is left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lab.playbook import LabSpec, playbook, recap
from lab.pytest_plugin import no_lab

pytestmark = [pytest.mark.lab]


@pytest.fixture(autouse=True)
def _lab_possible(request: pytest.FixtureRequest) -> None:
    if os.geteuid() != 0:
        no_lab(request.config, "the local lab needs root")
    if shutil.which("ansible-playbook") is None and not Path(".venv/bin/ansible-playbook").exists():
        no_lab(request.config, "ansible-core not installed")


PREFIX, SUBNET, SIZE = "sgt", "198.18.128.0/24", 8
KEY = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA="  # a fixed test key (base64 of 32 bytes)


def run(inventory: Path, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    result = playbook(LabSpec(PREFIX, SUBNET, SIZE, inventory), name, *extra, timeout=900)
    print(result.stdout[-6000:], result.stderr[-3000:])
    return result


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    inventory = tmp_path_factory.mktemp("lab") / "hosts.yml"
    LabSpec(PREFIX, SUBNET, SIZE, inventory).prepare()
    keys = json.dumps({"gossip_agent_keys": [KEY]})
    try:
        first = run(inventory, "site.yml", "-e", keys)
        assert first.returncode == 0, "site.yml failed from nothing"
        second = run(inventory, "site.yml", "-e", keys)
        assert second.returncode == 0, "site.yml failed on the re-run"
        yield inventory, first, second
    finally:
        down = run(inventory, "lab-down.yml")
        assert down.returncode == 0, "lab-down.yml failed"


def hosts(inventory: Path):
    import testinfra
    import yaml

    data = yaml.safe_load(inventory.read_text())["all"]["children"]["agents"]
    key = data["vars"]["ansible_ssh_private_key_file"]
    extra = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
    return {
        name: testinfra.get_host(f"ssh://root@{h['ansible_host']}", ssh_identity_file=key, ssh_extra_args=extra)
        for name, h in data["hosts"].items()
    }


def test_first_run_changes_and_second_run_changes_nothing(lab):
    _, first, second = lab
    first_recap, second_recap = recap(first.stdout), recap(second.stdout)
    assert set(first_recap) == {"localhost", *(f"h{i:02d}" for i in range(1, SIZE + 1))}
    assert all(counts["changed"] > 0 for host, counts in first_recap.items())
    assert {host: counts["changed"] for host, counts in second_recap.items()} == dict.fromkeys(second_recap, 0)


def test_every_host_runs_a_supervised_agent_in_its_own_namespaces(lab):
    inventory, _, _ = lab
    all_hosts = hosts(inventory)
    addresses = {}
    for name, host in all_hosts.items():
        assert host.check_output("hostname") == name
        status = host.run("/opt/gossip-agent/bin/gossip-agent-service status")
        assert status.rc == 0, status.stdout
        assert host.process.filter(comm="gossip-agent") or "gossip-agent run" in host.check_output("ps -eo args")
        address = host.check_output("ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1")
        addresses[name] = address
        assert host.socket(f"tcp://{address}:7946").is_listening
        assert host.socket(f"udp://{address}:7946").is_listening
        assert host.file("/etc/gossip-agent/agent.yaml").mode == 0o640
        assert host.file("/etc/gossip-agent/keyring.json").mode == 0o600
        assert host.file("/run/gossip-agent/api.sock").mode & 0o777 == 0o600
        assert "default" not in host.check_output("ip route")  # never a route out of the lab
        # Every CPU this machine's init has, as a VM's processes would (mitogen had pinned them to one).
        assert int(host.check_output("nproc")) == len(os.sched_getaffinity(1))
        members = json.loads(host.check_output("/opt/gossip-agent/venv/bin/gossip-agent ctl --json members"))
        assert {m["name"]: m["state"] for m in members} == {h: "alive" for h in all_hosts}
    assert len(set(addresses.values())) == SIZE
    first, second = all_hosts["h01"], all_hosts["h02"]
    first.run("echo h01 > /opt/marker")
    assert second.run("test -e /opt/marker").rc != 0  # /opt is private to each host
    first.run("rm -f /opt/marker")


def test_supervisor_restarts_a_killed_agent(lab):
    inventory, _, _ = lab
    host = hosts(inventory)["h03"]
    pid = host.check_output("cat /run/gossip-agent/agent.pid")
    host.run(f"kill -9 {pid}")
    health = "/opt/gossip-agent/venv/bin/gossip-agent ctl health >/dev/null 2>&1"
    restarted = f'[ "$(cat /run/gossip-agent/agent.pid)" != {pid} ] && {health}'
    host.run(f"for i in $(seq 50); do {restarted} && exit 0; sleep 0.2; done; exit 1")
    assert host.check_output("cat /run/gossip-agent/agent.pid") != pid
    assert host.run("/opt/gossip-agent/venv/bin/gossip-agent ctl health").rc == 0


def test_rolling_config_change_keeps_every_entry(lab):
    inventory, _, _ = lab
    all_hosts = hosts(inventory)
    ctl = "/opt/gossip-agent/venv/bin/gossip-agent ctl"
    assert all_hosts["h01"].run(f"{ctl} churn lab --count 100 --prefix roll-").rc == 0
    change = json.dumps({"gossip_agent_keys": [KEY], "gossip_agent_serial": 3,
                         "gossip_agent_protocol": {"bulk_sync_interval": 9}})  # fmt: skip
    result = run(inventory, "deploy.yml", "-e", change)
    assert result.returncode == 0
    assert result.stdout.count("PLAY [Deploy the scoped gossip agent]") == 3  # batches of 3, 3, 2
    assert all(counts["changed"] > 0 for host, counts in recap(result.stdout).items() if host != "localhost")
    for name, host in all_hosts.items():  # every agent restarted, three at a time; nothing lost
        check = f"{ctl} --json networks | python3 -c 'import json,sys; print(json.load(sys.stdin)[0][\"entries\"])'"
        done = 'for i in $(seq 100); do [ "$(' + check + ')" = 100 ] && exit 0; sleep 0.2; done; exit 1'
        assert host.run(done).rc == 0, f"{name} lacks entries after the rolling restart"
        assert "bulk_sync_interval" in host.check_output("cat /etc/gossip-agent/agent.yaml")


def test_another_lab_coming_and_going_leaves_this_one_private(lab, tmp_path):
    # Removing the mount-point directories while a lab is up would unmount them in its hosts.
    other = LabSpec("sgu", "198.18.130.0/24", 1, tmp_path / "hosts.yml")
    other.prepare()
    assert playbook(other, "lab-up.yml").returncode == 0
    assert playbook(other, "lab-down.yml").returncode == 0
    inventory, _, _ = lab
    for name, host in hosts(inventory).items():
        assert f"node_name: {name}" in host.check_output("cat /etc/gossip-agent/agent.yaml")
        assert host.run("mountpoint -q /etc/gossip-agent").rc == 0


def test_lab_down_leaves_nothing(lab):
    inventory, _, _ = lab
    down = run(inventory, "lab-down.yml")
    assert down.returncode == 0
    assert not [ns for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                if ns.startswith(f"{PREFIX}-")]  # fmt: skip
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"{PREFIX}-" not in links
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"scoped-gossip-lab/{PREFIX}" not in processes
    assert not Path(f"/var/lib/scoped-gossip-lab/{PREFIX}").exists()
    assert not inventory.exists()
    again = run(inventory, "lab-down.yml")  # safe to re-run
    assert again.returncode == 0
