"""The data plane on the lab: containers on two overlapping VXLAN networks, routes programmed by the
agents from their tables, judged by the kernel's entries on every host and by packets.

Both networks use the same subnet, so one address can be a container of each: a ping from one
network that reaches an address only the other network has can only be a leak between them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from lab.checker import Checker, wait_for
from lab.churn import Churn
from lab.fleet import CTL, Fleet, FleetError
from lab.history import Truth
from lab.inventory import load
from lab.nemesis import Nemesis
from lab.routes import Routes, endpoint_states
from lab.scenario import assert_clean, leave, leave_evidence

pytestmark = [pytest.mark.lab]
SUBNET = "198.19.0.0/20"  # 64 host blocks of 64 addresses
VXLAN = {"dp-a": 4201, "dp-b": 4202, "dp-c": 4203}
PER_HOST = 3  # containers per host and network
PINGS = 40  # sampled pings per kind (within a network, across networks)


def networks_of(hosts: list[str]) -> dict[str, list[str]]:
    """Two networks that overlap in the middle hosts; each has at least 3 hosts."""
    third = max(1, len(hosts) // 4)
    return {"dp-a": hosts[: len(hosts) - third], "dp-b": hosts[third:]}


async def check_packets(
    routes: Routes, truth: Truth, rng: random.Random, deleted: dict[str, set[str]]
) -> list[dict[str, Any]]:
    """Sampled pings, and pings from a live container of each network to the addresses its
    deleted containers had (and no live one has again), which nothing may answer."""
    pairs = routes.sample(truth, rng, PINGS)
    for network, addresses in sorted(deleted.items()):
        live = truth.keys(network)
        source = next((e for ip in sorted(live) for e in endpoint_states(truth, network)[ip] if e is not None), None)
        owner = {routes.vtep(h): h for h in routes.fleet.hosts}
        if source is not None:
            gone = sorted(addresses - live)[:PINGS]
            pairs += [(owner[source.vtep], source, ip, False) for ip in gone]
    results = await routes.ping(pairs)
    return [r for r in results if not r["right"]]


Body = Callable[[Fleet, Checker, Routes, Churn, Nemesis], Awaitable[dict[str, Any]]]


Layout = Callable[[list[str]], dict[str, list[str]]]  # the hosts -> each network's members


async def on_overlay(inventory: str, seed: int, members_of: Layout, body: Body) -> dict[str, Any]:
    """Attach the hosts to fresh VXLAN networks, run the body, and always remove the containers
    and leave the networks; a failed body leaves its evidence."""
    fleet = Fleet(load(inventory))
    await fleet.connect()
    nemesis = Nemesis(fleet, seed)
    members = members_of(sorted(fleet.hosts))
    churn = Churn(fleet)
    checker = Checker(fleet, members)
    routes = Routes(fleet, members, {n: VXLAN[n] for n in members})
    try:
        await nemesis.heal_all()
        for network, hosts in members.items():
            attach = {"network": network, "vxlan_id": VXLAN[network], "subnet": SUBNET}
            await fleet.each(lambda h, b=attach: fleet.api(h, "POST", "/networks", b), hosts)
        await wait_for(checker.membership_converged, 60, "all hosts alive everywhere")
        await wait_for(lambda: checker.converged(Truth()), 60, "the networks attached and empty everywhere")
        await wait_for(routes.ready, 60, "the data plane on for every member")
        await checker.baseline()
        verdict = await body(fleet, checker, routes, churn, nemesis)
        verdict["routes"] = await routes.verdict(churn.truth)
        return verdict
    except (AssertionError, FleetError) as exc:
        where = await leave_evidence(fleet, next(iter(members)), nemesis)
        raise type(exc)(f"{exc} (evidence in {where})") from exc
    finally:
        try:
            await nemesis.heal_all()
        finally:
            for network, hosts in members.items():
                await fleet.each(lambda h, n=network: clear(fleet, h, n), hosts)
            await fleet.close()


async def clear(fleet: Fleet, host: str, network: str) -> None:
    """Remove this scenario's containers and leave the network, even after a failure."""
    try:
        await fleet.run(host, f"{CTL} container delete {network} --all", check=False)
    finally:
        await leave(fleet, host, network)


def test_containers_reach_their_network_only_and_deleted_ones_leave_no_route(lab_inventory, seed, progress):
    rng = random.Random(seed)

    async def body(fleet: Fleet, checker: Checker, routes: Routes, churn: Churn, nemesis: Nemesis) -> dict[str, Any]:
        members = checker.members
        started = time.monotonic()
        await asyncio.gather(*(churn.create_containers(h, n, PER_HOST) for n, hs in members.items() for h in hs))
        made = time.monotonic()
        await wait_for(lambda: checker.converged(churn.truth), 30, "the endpoint tables")
        tables = time.monotonic()
        await wait_for(lambda: routes.converged(churn.truth), 30, "every host's fdb and neighbour entries")
        kernel = time.monotonic()
        wrong = await check_packets(routes, churn.truth, rng, {})
        count = sum(len(churn.truth.keys(n)) for n in members)
        progress(f"{count} containers made in {made - started:.2f} s; tables {tables - made:.2f} s, "
                 f"routes {kernel - made:.2f} s after; pings wrong: {len(wrong)}")  # fmt: skip
        assert not wrong, f"pings that went wrong: {wrong[:5]}"

        # Delete half of every host's containers: their routes must go everywhere, and nothing
        # may answer at their addresses.
        deleted: dict[str, set[str]] = {}
        batches = []
        for (host, network), placed in sorted(churn.containers.items()):
            doomed = sorted(placed)[: len(placed) // 2 + 1]
            deleted.setdefault(network, set()).update(placed[name] for name in doomed)
            batches.append(churn.delete_containers(host, network, doomed))
        await asyncio.gather(*batches)
        gone = time.monotonic()
        await wait_for(lambda: routes.converged(churn.truth), 30, "stale routes of deleted containers removed")
        count = sum(map(len, deleted.values()))
        progress(f"{count} containers deleted; no stale route {time.monotonic() - gone:.2f} s after")
        wrong = await check_packets(routes, churn.truth, rng, deleted)
        assert not wrong, f"pings that went wrong after the deletes: {wrong[:5]}"
        return await checker.verdict(churn.truth)

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
        wrong = await check_packets(routes, churn.truth, rng, deleted)
        assert not wrong, f"pings that went wrong: {wrong[:5]}"
        return await checker.verdict(churn.truth)

    verdict = asyncio.run(on_overlay(lab_inventory, seed, lambda hosts: {"dp-c": hosts}, body))
    assert verdict["routes"]["valid"], verdict["routes"]
    assert_clean(verdict)
