"""The data plane on the lab (lab/overlay.py): containers on two overlapping VXLAN networks, routes
programmed by the agents from their tables, judged by the kernel's entries on every host and by
packets; and moby#52661's stale routes after container churn, a kill -9 and a partition."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from lab.checker import Checker, wait_for
from lab.churn import Churn
from lab.fleet import Fleet
from lab.nemesis import Nemesis
from lab.overlay import networks_of, on_overlay, two_networks
from lab.routes import PINGS, Routes
from lab.scenario import assert_clean

pytestmark = [pytest.mark.lab]
PER_HOST = 3  # containers per host and network


def test_containers_reach_their_network_only_and_deleted_ones_leave_no_route(lab_inventory, seed, progress):
    def body(fleet: Fleet, checker: Checker, routes: Routes, churn: Churn, nemesis: Nemesis) -> Any:
        return two_networks(fleet, checker, routes, churn, random.Random(seed), PER_HOST, progress)

    verdict = asyncio.run(on_overlay(lab_inventory, seed, networks_of, body))
    assert verdict["routes"]["valid"], verdict["routes"]
    assert_clean(verdict)


def test_moby_52661_no_stale_route_after_churn_a_kill_and_a_partition(lab_inventory, seed, progress):
    """moby#52661: after container churn, a writer's kill -9 and a partition during which
    containers come and go, no host keeps an fdb or neighbour entry of a container that is gone,
    and every live one is reachable."""
    rng = random.Random(seed)

    async def body(fleet: Fleet, checker: Checker, routes: Routes, churn: Churn, nemesis: Nemesis) -> dict[str, Any]:
        h = sorted(fleet.hosts)
        network = "dp-c"
        deleted: dict[str, set[str]] = {}

        async def churn_round(host: str) -> None:
            """Make 4 containers, then delete 2 of this host's: the next round's creates take their
            addresses again, and each must then route to its new container only."""
            await churn.create_containers(host, network, 4)
            placed = churn.containers[(host, network)]
            doomed = sorted(placed)[:2]
            deleted.setdefault(network, set()).update(placed[name] for name in doomed)
            await churn.delete_containers(host, network, doomed)

        await asyncio.gather(*(churn_round(host) for host in h))
        await nemesis.kill(h[0])  # between batches: its containers live on, its agent restarts
        await asyncio.gather(*(churn_round(host) for host in h[1:]))
        cut = nemesis.shape("isolate")  # the first host alone, while the others churn on
        await nemesis.partition(cut)
        await asyncio.gather(*(churn_round(host) for host in h[2:]))
        await nemesis.heal_all()
        healed = time.monotonic()
        await wait_for(lambda: checker.converged(churn.truth), 60, "the endpoint tables after the heal")
        await wait_for(lambda: routes.converged(churn.truth), 60, "no stale or missing route after the heal")
        count = sum(map(len, deleted.values()))
        progress(f"routes right {time.monotonic() - healed:.2f} s after the heal; {count} containers deleted")
        wrong = await routes.wrong_pings(churn.truth, rng, PINGS, deleted)
        assert not wrong, f"pings that went wrong: {wrong[:5]}"
        await wait_for(lambda: checker.converged(churn.truth), 30, "the endpoint tables at the end")
        return await checker.verdict(churn.truth)

    verdict = asyncio.run(on_overlay(lab_inventory, seed, lambda hosts: {"dp-c": hosts}, body))
    assert verdict["routes"]["valid"], verdict["routes"]
    assert_clean(verdict)
