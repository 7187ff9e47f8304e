"""Every partition shape with churn on every side: each side converges inside while cut off, and
after the heal everything converges with nothing lost, resurrected or leaked."""

from __future__ import annotations

import asyncio

import pytest

from lab.checker import Checker, wait_for
from lab.churn import Churn
from lab.fleet import Fleet
from lab.nemesis import Nemesis
from lab.scenario import check_on_fresh_network, holds

pytestmark = [pytest.mark.lab, pytest.mark.partition]

SHAPES = [
    ("halves", True),
    ("halves", False),  # asymmetric: the first half's packets to the second are dropped, not the reverse
    ("random-halves", True),
    ("majority", True),
    ("minority-third", True),
    ("isolate", True),
    ("bridge", True),
    ("ring", True),
]
HOLD = 6.0  # seconds: longer than failure detection, so the sides declare each other dead


@pytest.mark.parametrize(("shape", "symmetric"), SHAPES, ids=[f"{s}-{'sym' if y else 'asym'}" for s, y in SHAPES])
def test_partition_shape_converges_inside_then_everywhere(lab_inventory, seed, progress, shape, symmetric):
    network = f"pt-{shape}"

    async def body(fleet: Fleet, checker: Checker, nemesis: Nemesis) -> dict:
        churn = Churn(fleet)
        names = sorted(fleet.hosts)
        await asyncio.gather(*(churn.create(h, network, 40, f"before-{h}-") for h in names))
        await wait_for(lambda: checker.converged(churn.truth), 60, "convergence before the partition")
        cut = nemesis.shape(shape, symmetric)
        await nemesis.partition(cut)
        progress(f"{shape}: groups {cut.groups}")
        writers = [group[0] for group in cut.groups]
        if shape == "ring":  # one group; write on two hosts that cannot reach each other
            writers = [names[0], names[len(names) // 2]]
        during = {w: f"during-{w}-" for w in writers}
        await asyncio.gather(*(churn.create(w, network, 150, p) for w, p in during.items()),
                             *(churn.delete(w, network, 20, f"before-{w}-") for w in writers))  # fmt: skip
        if shape != "ring":
            for group in cut.groups:
                own = {f"{during[w]}{i}" for w in writers if w in group for i in range(150)}
                await wait_for(
                    lambda g=group, k=own: holds(fleet, g, network, k), 30, f"side {group} to converge inside"
                )
        await asyncio.sleep(HOLD)
        await nemesis.heal_all()
        await wait_for(lambda: checker.converged(churn.truth), 60, f"convergence after healing {shape}")
        await wait_for(checker.membership_converged, 60, "membership after the heal")
        return await checker.verdict(churn.truth)

    check_on_fresh_network(lab_inventory, network, body, seed)
