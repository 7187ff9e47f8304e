"""Containers on VXLAN overlays, end to end on any inventory: routes programmed by the agents from
their tables, judged by every host's kernel entries and by packets.

    python -m lab.overlay [--inventory inventories/local] [--containers 3] [--seed 1]

Two networks overlap in the middle hosts and share one subnet, so one address can be a container
of each: a ping from one network that an address only the other network has answers can only be
a leak between them. The scenarios of scenarios/test_dataplane.py run on the same frame.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .checker import Checker, wait_for
from .churn import Churn
from .experiment import Say
from .fleet import CTL, Fleet, FleetError
from .history import Truth
from .inventory import InventoryError, load
from .nemesis import Nemesis
from .playbook import ROOT
from .routes import PINGS, Routes
from .scenario import leave, leave_evidence

SUBNET = "198.19.0.0/20"  # 64 host blocks of 64 addresses
VXLAN = {"dp-a": 4201, "dp-b": 4202, "dp-c": 4203}


def networks_of(hosts: list[str]) -> dict[str, list[str]]:
    """Two networks that overlap in the middle hosts (of 8 hosts: 6 each, 4 of them in both)."""
    third = max(1, len(hosts) // 4)
    return {"dp-a": hosts[: len(hosts) - third], "dp-b": hosts[third:]}


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
        verdict["routes"] = await routes.settled_verdict(churn.truth, 30)  # still right once the body is done
        assert verdict["routes"]["valid"], f"routes at the end: {verdict['routes']}; suspicions {verdict['suspicions']}"
        return verdict
    except (AssertionError, FleetError) as exc:
        where = await leave_evidence(fleet, next(iter(members)), nemesis)
        try:
            (where / "routes.json").write_text(json.dumps(await routes.verdict(churn.truth), indent=1))
        except FleetError as error:
            (where / "routes.json").write_text(json.dumps({"error": str(error)}))
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


async def two_networks(
    fleet: Fleet, checker: Checker, routes: Routes, churn: Churn, rng: random.Random, per_host: int, say: Say
) -> dict[str, Any]:
    """`per_host` containers on every host of each network, then half of them deleted: routes
    right on every host, sampled pings answered within a network and never across, nothing at
    a deleted address. Returns the tables' verdict with the figures measured."""
    members = checker.members
    started = time.monotonic()
    await asyncio.gather(*(churn.create_containers(h, n, per_host) for n, hs in members.items() for h in hs))
    made = time.monotonic()
    await wait_for(lambda: checker.converged(churn.truth), 30, "the endpoint tables")
    tables = time.monotonic()
    await wait_for(lambda: routes.converged(churn.truth), 30, "every host's fdb and neighbour entries")
    kernel = time.monotonic()
    wrong = await routes.wrong_pings(churn.truth, rng, PINGS)
    count = sum(len(churn.truth.keys(n)) for n in members)
    say(f"{count} containers made in {made - started:.2f} s; tables {tables - made:.2f} s, "
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
    cleared = time.monotonic()
    removed = sum(map(len, deleted.values()))
    say(f"{removed} containers deleted; no stale route {cleared - gone:.2f} s after")
    wrong = await routes.wrong_pings(churn.truth, rng, PINGS, deleted)
    assert not wrong, f"pings that went wrong after the deletes: {wrong[:5]}"
    await wait_for(lambda: checker.converged(churn.truth), 30, "the endpoint tables at the end")
    verdict = await checker.verdict(churn.truth)
    verdict["figures"] = {"containers": count, "created_in_s": round(made - started, 3),
                          "tables_after_s": round(tables - made, 3), "routes_after_s": round(kernel - made, 3),
                          "deleted": removed, "no_stale_route_after_s": round(cleared - gone, 3)}  # fmt: skip
    return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inventory", default=str(ROOT / "inventories" / "local"), help="hosts (the local lab's)")
    parser.add_argument("--containers", type=int, default=3, help="containers per host and network (3)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the sampled pings (1)")
    parser.add_argument("--results-dir", default=str(ROOT / "results"), help="where results.json goes (results/)")
    args = parser.parse_args(argv)
    if not 1 <= args.containers <= 63:
        parser.error("--containers: 1-63 per host and network (a host's block holds 63)")

    def say(text: str) -> None:
        print(f"  {text}", flush=True)

    try:
        verdict = asyncio.run(on_overlay(args.inventory, args.seed, networks_of,
                                         lambda fleet, checker, routes, churn, _: two_networks(
                                             fleet, checker, routes, churn, random.Random(args.seed),
                                             args.containers, say)))  # fmt: skip
    except InventoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (AssertionError, FleetError) as exc:
        print(f"FAIL: {exc}")
        return 1
    out = Path(args.results_dir) / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-overlay"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(verdict, indent=2, default=str))
    valid = verdict["valid"] and verdict["routes"]["valid"]
    print(f"{'PASS' if valid else 'FAIL'}: {json.dumps(verdict['figures'])}; {out / 'results.json'}")
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
