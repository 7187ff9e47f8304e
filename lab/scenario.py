"""The frame of a hand-written scenario: connect, attach every host to a fresh network, wait until
it is quiet, run the body, and always heal every fault and disconnect."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from .checker import Checker, wait_for
from .fleet import Fleet, FleetError
from .inventory import load
from .nemesis import Nemesis

Body = Callable[[Fleet, Checker, Nemesis], Awaitable[Any]]


async def on_fresh_network(inventory: str, network: str, body: Body, seed: int = 0, members: int | None = None) -> Any:
    """`members`: only the first so many hosts (sorted) join the network; default all."""
    fleet = Fleet(load(inventory))
    await fleet.connect()
    nemesis = Nemesis(fleet, seed)
    try:
        await nemesis.heal_all()  # nothing left over from an interrupted run
        names = sorted(fleet.hosts)[:members]
        await fleet.each(lambda name: fleet.api(name, "POST", "/networks", {"network": network}), names)
        checker = Checker(fleet, {network: names})
        await wait_for(checker.membership_converged, 60, "all hosts alive everywhere")
        await wait_for(lambda: checker.converged({network: set()}), 60, f"{network} attached and empty everywhere")
        await checker.baseline()
        return await body(fleet, checker, nemesis)
    finally:
        await nemesis.heal_all()
        await fleet.each(lambda name: leave(fleet, name, network))  # later scenarios start quiet
        await fleet.close()


async def leave(fleet: Fleet, host: str, network: str) -> None:
    """Detach `host` from `network` if it answers; for cleanup, which must not mask a failure."""
    try:
        await fleet.api(host, "DELETE", f"/networks/{network}")
    except FleetError:
        pass  # an agent that does not answer is the body's failure, reported already


def assert_clean(verdict: dict[str, Any]) -> dict[str, Any]:
    """The verdict of a scenario holds; the failure shows the evidence without the bulky parts."""
    evidence = str({k: v for k, v in verdict.items() if k not in ("latency_s", "bytes_out")})
    assert verdict["missing"] == {}, evidence
    assert verdict["resurrected"] == {}, evidence
    assert verdict["valid"], evidence
    return verdict


def check_on_fresh_network(
    inventory: str, network: str, body: Body, seed: int = 0, members: int | None = None
) -> dict[str, Any]:
    """`on_fresh_network`, run to its end; the body returns a verdict, which must hold."""
    return assert_clean(asyncio.run(on_fresh_network(inventory, network, body, seed, members)))


async def holds(fleet: Fleet, hosts: list[str], network: str, keys: set[str]) -> bool:
    """Every one of `hosts` holds at least `keys` in `network` (a side of a partition may also
    hold what a bridge relayed to it)."""
    dumps = await fleet.each(lambda h: fleet.api(h, "GET", f"/networks/{network}/entries"), hosts)
    return all(keys <= {e["key"] for e in d["entries"]} for d in dumps.values())
