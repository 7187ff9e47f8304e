"""The headline experiment as shipped (scenarios/experiments/headline.yaml): 10,000 endpoints in
3 overlapping networks, half written during a halves partition with deletes on both sides."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.spec import load

pytestmark = [pytest.mark.lab, pytest.mark.partition]
HEADLINE = Path(__file__).parent / "experiments" / "headline.yaml"


def test_headline_converges_in_scope_with_nothing_lost_or_resurrected(experiment):
    result = experiment(load(HEADLINE))
    verdict = result["verdict"]
    assert result["endpoints"] == 9000  # 10,000 written, 1,000 of them deleted
    assert verdict["missing"] == {}
    assert verdict["unexpected"] == {}
    assert verdict["resurrected"] == {}
    assert verdict["scope_leaks"] == {}
    assert verdict["out_of_scope_received"] == {}
    steady, partitioned = result["phases"]
    assert all(partitioned["fault"]["groups"])  # both halves had hosts
    # Generous deadlines; the measured figures are in the report and the closing notes.
    assert steady["after_last_write_s"] < 30
    assert partitioned["after_heal_s"] < 30
    assert result["valid"]
    assert Path(result["report"]).exists()
