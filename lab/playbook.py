"""Run this repository's playbooks against a lab of a given prefix, subnet and size."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class LabSpec:
    """A local lab of its own: tests, scenarios and benchmarks each use another prefix and subnet,
    so they never touch the demo's lab (prefix sgl, 198.18.0.0/16)."""

    prefix: str
    subnet: str
    size: int
    inventory: Path
    init: str = "sshd"  # or systemd: Debian roots booted with systemd (see roles/lab_host)

    def prepare(self) -> None:
        """The inventory's directory gets the local lab's group_vars (profile, networks)."""
        target = self.inventory.parent / "group_vars"
        if not target.exists():
            shutil.copytree(ROOT / "inventories" / "local" / "group_vars", target)


def playbook(lab: LabSpec, name: str, *extra: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """ansible-playbook -i <lab inventory> playbooks/<name> with the lab's settings; output captured."""
    binary = shutil.which("ansible-playbook") or str(Path(sys.executable).with_name("ansible-playbook"))
    settings = [f"lab_prefix={lab.prefix}", f"lab_subnet={lab.subnet}", f"lab_inventory={lab.inventory}",
                f"lab_size={lab.size}", f"lab_init={lab.init}"]  # fmt: skip
    args = [binary, "-i", str(lab.inventory), str(ROOT / "playbooks" / name)]
    for setting in settings:
        args += ["-e", setting]
    args += list(extra)
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "PATH": f"{Path(binary).parent}:{os.environ.get('PATH', '')}"}
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def recap(output: str) -> dict[str, dict[str, int]]:
    """ansible-playbook's PLAY RECAP: per host its counters (ok, changed, failed, ...)."""
    hosts = {}
    for host, counters in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, re.M):
        hosts[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counters)}
    return hosts
