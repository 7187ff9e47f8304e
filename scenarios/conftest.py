"""A local lab of its own for the scenarios (prefix sgs), brought up once and always torn down."""

from __future__ import annotations

import os

import pytest

from lab.ansible import LabSpec, playbook


def _playbook(lab: LabSpec, name: str) -> int:
    result = playbook(lab, name)
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-2000:])
    return result.returncode


@pytest.fixture(scope="session")
def lab_inventory(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the local lab needs root")
    lab = LabSpec("sgs", "198.18.129.0/24", 8, tmp_path_factory.mktemp("scenario-lab") / "hosts.yml")
    lab.prepare()
    try:
        assert _playbook(lab, "site.yml") == 0, "site.yml failed"
        yield str(lab.inventory)
    finally:
        assert _playbook(lab, "lab-down.yml") == 0, "lab-down.yml failed"
