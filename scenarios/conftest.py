"""A local lab of its own for the scenarios (prefix sgs), brought up once and always torn down."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PREFIX, SUBNET, SIZE = "sgs", "198.18.129.0/24", 8


def _playbook(inventory: Path, name: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("ansible-playbook") or str(Path(sys.executable).with_name("ansible-playbook"))
    args = [binary, "-i", str(inventory), str(ROOT / "playbooks" / name)]
    for setting in (f"lab_prefix={PREFIX}", f"lab_subnet={SUBNET}", f"lab_inventory={inventory}", f"lab_size={SIZE}"):
        args += ["-e", setting]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-2000:])
    return result


@pytest.fixture(scope="session")
def lab_inventory(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the local lab needs root")
    workdir = tmp_path_factory.mktemp("scenario-lab")
    inventory = workdir / "hosts.yml"
    shutil.copytree(ROOT / "inventories" / "local" / "group_vars", workdir / "group_vars")
    try:
        assert _playbook(inventory, "site.yml").returncode == 0, "site.yml failed"
        yield str(inventory)
    finally:
        assert _playbook(inventory, "lab-down.yml").returncode == 0, "lab-down.yml failed"
