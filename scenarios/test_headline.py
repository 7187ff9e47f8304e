"""The headline experiment as shipped (scenarios/experiments/headline.yaml): 10,000 endpoints in
3 overlapping networks, half written during a halves partition with deletes on both sides, and
containers on the VXLAN overlay of every network in both phases."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.spec import load

pytestmark = [pytest.mark.lab, pytest.mark.partition]
HEADLINE = Path(__file__).parent / "experiments" / "headline.yaml"


def test_headline_converges_in_scope_with_nothing_lost_or_resurrected(experiment):
    result = experiment(load(HEADLINE))
    verdict = result["verdict"]
    # 10,000 written, 1,000 of them deleted; 3 containers per writer (2), network (3) and phase (2).
    assert result["endpoints"] == 9000 + 36
    for kind in ("missing", "unexpected", "wrong", "resurrected", "scope_leaks", "out_of_scope_received"):
        assert verdict[kind] == {}, kind
    assert verdict["routes"]["valid"], verdict["routes"]
    assert verdict["wrong_pings"] == []
    steady, partitioned = result["phases"]
    assert "reachable_after_last_write_s" in steady, steady
    assert "reachable_after_heal_s" in partitioned, partitioned
    assert all(partitioned["fault"]["groups"])  # both halves had hosts
    assert set(result["outcomes"]) == {"ok"}  # every churn batch's outcome known, and done
    # The spec's own targets (after_last_write_s, after_heal_s) are the pass criteria, as in
    # `make demo`: one source of truth for what "converged in time" means.
    assert result["targets_met"], result["targets"]
    assert result["passed"], result["verdict_line"]
    assert Path(result["report"]).exists()
