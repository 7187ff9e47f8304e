"""The role on VM-like hosts: a 3-host systemd lab (Debian roots booted with systemd as PID 1, a
user `lab` with sudo, no root login), deployed with site.yml and checked over testinfra's paramiko
backend; systemd restarts a killed agent, a stop is a graceful leave, collect.yml brings the
journal back, a partition scenario runs on it unchanged; lab_hosts waits for a slow host, rebuilds
a dead one from its own disk and fails with a reason, never a traceback.

Uses its own prefix and subnet, so the other labs of `make test` and a demo lab are left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lab.nemesis import signal_agent
from lab.playbook import ROOT, LabSpec, playbook, recap
from lab.pytest_plugin import no_lab

pytestmark = [pytest.mark.lab]

PREFIX, SUBNET, SIZE = "sgy", "198.18.131.0/24", 3
SLOW = 12.0  # seconds a host's sshd stays stopped while lab-up runs: longer than lab-up takes itself
STATE = Path(f"/var/lib/scoped-gossip-lab/{PREFIX}")
CTL = "/opt/gossip-agent/venv/bin/gossip-agent ctl"
MODULE = ROOT / "roles" / "lab_host" / "library" / "lab_hosts.py"


@pytest.fixture(autouse=True)
def _lab_possible(request: pytest.FixtureRequest) -> None:
    if os.geteuid() != 0:
        no_lab(request.config, "the local lab needs root")
    if shutil.which("debootstrap") is None:
        no_lab(request.config, "debootstrap not installed (make test installs it)")


def run(lab: LabSpec, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    result = playbook(lab, name, *extra, timeout=900)
    print(result.stdout[-6000:], result.stderr[-3000:])
    return result


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    spec = LabSpec(PREFIX, SUBNET, SIZE, tmp_path_factory.mktemp("systemd-lab") / "hosts.yml", init="systemd")
    spec.prepare()
    assert run(spec, "lab-down.yml").returncode == 0  # what a killed run left behind, disks included
    try:
        started = time.monotonic()
        up = run(spec, "lab-up.yml")
        assert up.returncode == 0, "lab-up.yml failed"
        deploying = time.monotonic()
        first = run(spec, "deploy.yml")
        assert first.returncode == 0, "deploy.yml failed on the systemd hosts"
        rerun = time.monotonic()
        second = run(spec, "site.yml")
        assert second.returncode == 0, "site.yml failed on the re-run"
        print(f"systemd lab of {SIZE}: up {deploying - started:.1f} s, deploy {rerun - deploying:.1f} s, "
              f"no-change site.yml {time.monotonic() - rerun:.1f} s")  # fmt: skip
        yield spec, first, second
    finally:
        down = run(spec, "lab-down.yml")
        assert down.returncode == 0, "lab-down.yml failed"
        assert_nothing_left()


def assert_nothing_left() -> None:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{PREFIX}-" not in namespaces
    assert f"{PREFIX}-" not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert not list(Path("/sys/fs/cgroup").glob(f"*/{PREFIX}-h*")) + list(Path("/sys/fs/cgroup").glob(f"{PREFIX}-h*"))
    assert str(STATE) not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert not STATE.exists()


def hosts(spec: LabSpec, tmp_path: Path, sudo: bool = True) -> dict:
    """testinfra hosts over paramiko, logged in as the inventory's user, commands through sudo."""
    import testinfra
    import yaml

    data = yaml.safe_load(spec.inventory.read_text())["all"]["children"]["agents"]
    config = tmp_path / "ssh_config"  # the lab's host keys are new each time: do not check them
    config.write_text("Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n")
    key, user = data["vars"]["ansible_ssh_private_key_file"], data["vars"]["ansible_user"]
    return {
        name: testinfra.get_host(
            f"paramiko://{user}@{h['ansible_host']}", ssh_identity_file=key, ssh_config=str(config), sudo=sudo
        )  # fmt: skip
        for name, h in data["hosts"].items()
    }


def wait(host, command: str, seconds: float = 30) -> None:
    """Until `command` succeeds on the host (a loop there: one round trip)."""
    tries = int(seconds / 0.2)
    result = host.run(f"for i in $(seq {tries}); do {command} && exit 0; sleep 0.2; done; exit 1")
    assert result.rc == 0, f"not within {seconds} s: {command}"


def members(host) -> dict[str, str]:
    return {m["name"]: m["state"] for m in json.loads(host.check_output(f"{CTL} --json members"))}


def test_deploy_changes_every_host_and_a_rerun_changes_nothing(lab):
    _, first, second = lab
    assert all(counts["changed"] > 0 for counts in recap(first.stdout).values())
    again = recap(second.stdout)
    assert set(again) == {"localhost", "h01", "h02", "h03"}
    assert {host: counts["changed"] for host, counts in again.items()} == dict.fromkeys(again, 0)


def test_deploy_in_check_mode_reports_and_changes_nothing(lab):
    spec, _, _ = lab
    check = run(spec, "deploy.yml", "--check")
    assert check.returncode == 0
    assert {host: counts["changed"] for host, counts in recap(check.stdout).items()} == dict.fromkeys(
        ("h01", "h02", "h03"), 0
    )
    key = json.dumps({"gossip_agent_keys": ["q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA="]})
    keyed = run(spec, "deploy.yml", "--check", "-e", key)  # a new keyring, a new install (crypto)
    assert keyed.returncode == 0
    assert all(counts["changed"] > 0 for counts in recap(keyed.stdout).values())
    for host in hosts(spec, spec.inventory.parent).values():  # it only said what it would do
        assert not host.file("/etc/gossip-agent/keyring.json").exists
        assert "keyring_file" not in host.check_output("cat /etc/gossip-agent/agent.yaml")


def test_systemd_runs_the_agent_as_a_unit_reachable_only_as_configured(lab, tmp_path):
    spec, _, _ = lab
    all_hosts = hosts(spec, tmp_path)
    for name, host in all_hosts.items():
        assert host.check_output("cat /proc/1/comm") == "systemd"
        assert host.check_output("hostname") == name
        assert host.run("systemctl is-system-running").stdout.strip() == "running"
        unit = host.service("gossip-agent")
        assert unit.is_enabled
        assert unit.is_running
        address = host.check_output("ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1")
        assert host.socket(f"tcp://{address}:7946").is_listening
        assert host.socket(f"udp://{address}:7946").is_listening
        assert host.file("/etc/gossip-agent/agent.yaml").mode == 0o640
        socket = host.file("/run/gossip-agent/api.sock")
        assert (socket.mode, socket.user, socket.group) == (0o660, "root", "lab")
        assert host.file("/etc/systemd/system/gossip-agent.service").mode == 0o644
        assert "default" not in host.check_output("ip route")  # never a route out of the lab
        assert members(host) == dict.fromkeys(all_hosts, "alive")
        journal = host.check_output("journalctl --unit gossip-agent --no-pager")
        assert f"agent {name} listening on {address}:7946" in journal
    login = hosts(spec, tmp_path, sudo=False)["h01"].run("id -un; sudo -n true && echo sudo")
    assert login.stdout.split() == ["lab", "sudo"]


def test_systemd_restarts_a_killed_agent(lab, tmp_path):
    spec, _, _ = lab
    host = hosts(spec, tmp_path)["h02"]
    pid = host.check_output("systemctl show --property MainPID --value gossip-agent")
    restarts = int(host.check_output("systemctl show --property NRestarts --value gossip-agent"))
    assert host.run(signal_agent("KILL")).rc == 0
    new_pid = f'[ "$(systemctl show --property MainPID --value gossip-agent)" != {pid} ]'
    wait(host, f"{new_pid} && {CTL} health >/dev/null 2>&1")
    assert int(host.check_output("systemctl show --property NRestarts --value gossip-agent")) == restarts + 1


def test_a_stop_is_a_graceful_leave_seen_by_the_others(lab, tmp_path):
    spec, _, _ = lab
    all_hosts = hosts(spec, tmp_path)
    leaver, watcher = all_hosts["h03"], all_hosts["h01"]
    try:
        assert leaver.run("systemctl stop gossip-agent").rc == 0  # SIGTERM (the unit's KillSignal)
        deadline = time.monotonic() + 15
        while members(watcher)["h03"] != "left" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert members(watcher)["h03"] == "left", "h01 does not see h03's stop as a leave"
        assert "leaving the cluster" in leaver.check_output("journalctl --unit gossip-agent --no-pager -n 30")
    finally:
        leaver.run("systemctl start gossip-agent")
    wait(watcher, f"{CTL} --json members | grep -c '\"alive\"' | grep -qx 3")


def test_collect_brings_back_the_journal(lab):
    spec, _, _ = lab
    run_id = f"test-systemd-collect-{os.getpid()}"
    out = ROOT / "results" / run_id
    try:
        result = run(spec, "collect.yml", "-e", f"run_id={run_id}")
        assert result.returncode == 0
        for name in ("h01", "h02", "h03"):
            log = (out / "hosts" / name / "agent.log").read_text()
            assert f"agent {name} listening on" in log  # the journal, with systemd's own lines
            assert "Started gossip-agent.service" in log
            assert json.loads((out / "hosts" / name / "members.json").read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_a_partition_scenario_runs_on_it_unchanged(lab, tmp_path):
    spec, _, _ = lab
    scenario = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "scenarios/test_partitions.py",
         "-k", "halves-sym and not random", "--inventory", str(spec.inventory), "--results-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    print(scenario.stdout[-4000:], scenario.stderr[-2000:])
    assert scenario.returncode == 0
    assert "1 passed" in scenario.stdout


def host_processes(index: int) -> tuple[int, int, int]:
    """(the host's unshare, its systemd, its sshd) as PIDs on this machine."""
    unshare = int((STATE / "hosts" / f"h{index:02d}" / "host.pid").read_text())

    def children(pid: int) -> list[int]:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    init = children(unshare)[0]
    sshd = next(c for c in children(init) if Path(f"/proc/{c}/comm").read_text().strip() == "sshd")
    return unshare, init, sshd


def test_lab_up_waits_for_a_slow_host_and_rebuilds_a_dead_one_from_its_disk(lab, tmp_path):
    spec, _, _ = lab
    journal = STATE / "hosts" / "h02" / "upper" / "var" / "lib" / "gossip-agent"
    files = {p.name: p.stat().st_ino for p in journal.iterdir()}
    assert files, "the agent keeps no state on the host's disk?"
    _, init, sshd = host_processes(2)
    os.kill(sshd, signal.SIGSTOP)  # alive, but its sshd answers nothing: a loaded box
    resume = threading.Timer(SLOW, os.kill, (sshd, signal.SIGCONT))
    try:
        slow = run(spec, "lab-up.yml", "-e", "lab_host_ssh_wait=3")
        assert slow.returncode != 0
        assert "sshd did not answer within 3 s on h02" in slow.stdout
        assert host_processes(2)[1] == init, "a live host was rebuilt"
        started = time.monotonic()
        resume.start()
        waited = run(spec, "lab-up.yml", "-e", "lab_host_ssh_wait=60")
        assert waited.returncode == 0
        assert time.monotonic() - started >= SLOW, "lab-up did not wait for the slow host"
        assert recap(waited.stdout)["localhost"]["changed"] == 0
        assert host_processes(2)[1] == init
    finally:
        resume.cancel()
        with contextlib.suppress(ProcessLookupError):
            os.kill(sshd, signal.SIGCONT)
    unshare, _, _ = host_processes(2)
    os.kill(unshare, signal.SIGKILL)  # the host dies with every process in it
    rebuilt = run(spec, "lab-up.yml")
    assert rebuilt.returncode == 0
    assert recap(rebuilt.stdout)["localhost"]["changed"] > 0
    assert host_processes(2)[0] != unshare
    assert {p.name: p.stat().st_ino for p in journal.iterdir() if p.name in files} == files  # same files
    # The unit is enabled on its disk: the agent comes back with the host, from its journal.
    host = hosts(spec, tmp_path)["h01"]
    wait(host, f"{CTL} --json members | grep -c '\"alive\"' | grep -qx 3", 60)


def test_another_kind_of_host_is_refused_while_the_lab_has_hosts(lab):
    spec, _, _ = lab
    _, init, _ = host_processes(1)
    other = run(LabSpec(PREFIX, SUBNET, SIZE, spec.inventory, init="sshd"), "lab-up.yml")
    assert other.returncode != 0
    assert f"lab {PREFIX} has systemd hosts: pass lab_init=systemd" in other.stdout
    assert host_processes(1)[1] == init


def test_check_mode_reports_what_lab_up_would_do_and_does_nothing(lab):
    spec, _, _ = lab
    check = run(LabSpec(PREFIX, SUBNET, SIZE + 1, spec.inventory, init="systemd"), "lab-up.yml", "--check")
    assert check.returncode == 0
    assert recap(check.stdout)["localhost"]["changed"] > 0
    assert f"{PREFIX}-h04" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not (STATE / "hosts" / "h04").exists()
    assert "h04" not in spec.inventory.read_text()


def test_lab_hosts_fails_with_a_reason_not_a_traceback(tmp_path):
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"prefix": "sgz", "size": 1, "subnet": "198.18.132.0/24",
                                                        "state_dir": "/proc/sgz-lab"}}))  # fmt: skip
    result = subprocess.run([sys.executable, str(MODULE), str(args)], capture_output=True, text=True, timeout=60)
    answer = json.loads(result.stdout)
    assert answer["failed"] is True
    assert answer["msg"] == "lab sgz: No such file or directory (/proc/sgz-lab)"
    assert "Traceback" not in result.stdout + result.stderr
    assert "sgz-br0" not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


def load_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("lab_hosts", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("first", ["init", "upper", "host.pid"])
def test_a_rebuild_keeps_a_dead_systemd_hosts_whole_disk_whatever_the_directory_order(tmp_path, monkeypatch, first):
    lab_hosts = load_module()
    lab = lab_hosts.Lab("sgq", "198.18.133.0/24", tmp_path, "systemd", tmp_path / "root-of-recipe")
    host = lab.dir(1)
    (host / "upper" / "var" / "lib" / "gossip-agent").mkdir(parents=True)
    (host / "upper" / "var" / "lib" / "gossip-agent" / "journal.db").write_text("own entries")
    (host / "ssh").mkdir()
    for name, text in {"init": "systemd", "lower": str(tmp_path / "root-of-recipe"), "machine-id": "x",
                       "host.log": "", "host.pid": "999999999", "boot.sh": ""}.items():  # fmt: skip
        (host / name).write_text(text)
    (host / "work").mkdir()
    listed = Path.iterdir

    def in_order(path: Path):  # the directory's order decides which entry is judged first
        entries = list(listed(path))
        return iter(sorted(entries, key=lambda p: p.name != first))

    monkeypatch.setattr(Path, "iterdir", in_order)
    lab.remove_host(1, keep_disk=True)
    assert {p.name for p in listed(host)} == lab_hosts.DISK["systemd"] - {"root"}
    assert (host / "upper" / "var" / "lib" / "gossip-agent" / "journal.db").read_text() == "own entries"
