"""Hosts from any Ansible inventory, through `ansible-inventory --list` (so every plugin works)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


class InventoryError(Exception):
    """The inventory cannot be read or has no usable hosts; phrased for the user."""


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    address: str
    user: str
    key: str | None
    port: int = 22
    lab: str = "sgl"  # the lab's prefix (inventory variable lab_prefix): names what the harness creates there


def _ansible_inventory() -> str:
    local = Path(sys.executable).with_name("ansible-inventory")
    found = shutil.which("ansible-inventory") or (str(local) if local.exists() else None)
    if found is None:
        raise InventoryError("ansible-inventory not found; run `make setup`")
    return found


def load(inventory: str | Path, group: str = "agents") -> list[Host]:
    result = subprocess.run([_ansible_inventory(), "-i", str(inventory), "--list"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    if result.returncode != 0:
        raise InventoryError(f"ansible-inventory -i {inventory} failed: {result.stderr.strip()[-300:]}")
    data = json.loads(result.stdout)
    names = data.get(group, {}).get("hosts", [])
    if not names:
        raise InventoryError(f"inventory {inventory} has no hosts in group {group!r}")
    hostvars = data.get("_meta", {}).get("hostvars", {})
    hosts = []
    for name in names:
        var = hostvars.get(name, {})
        hosts.append(Host(name, str(var.get("ansible_host", name)), str(var.get("ansible_user", "root")),
                          var.get("ansible_ssh_private_key_file"), int(var.get("ansible_port", 22)),
                          str(var.get("lab_prefix", "sgl"))))  # fmt: skip
    return hosts
