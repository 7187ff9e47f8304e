"""The frame of a hand-written scenario: connect, attach every host to a fresh network, wait until
it is quiet, run the body, and always heal every fault and disconnect."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .checker import Checker, wait_for
from .experiment import collect_logs
from .fleet import Fleet, FleetError
from .history import Truth
from .inventory import load
from .nemesis import Nemesis, NemesisError
from .playbook import ROOT

Body = Callable[[Fleet, Checker, Nemesis], Awaitable[Any]]


# Where a failed scenario leaves its evidence; the pytest plugin sets it from --results-dir.
RESULTS_DIR = ROOT / "results"


async def on_fresh_network(inventory: str, network: str, body: Body, seed: int = 0, members: int | None = None) -> Any:
    """`members`: only the first so many hosts (sorted) join the network; default all. A body
    that fails leaves every host's tables, stats and agent log under RESULTS_DIR/scenarios/."""
    fleet = Fleet(load(inventory))
    await fleet.connect()
    nemesis = Nemesis(fleet, seed)
    failed = True
    try:
        await nemesis.heal_all()  # nothing left over from an interrupted run
        names = sorted(fleet.hosts)[:members]
        await fleet.each(lambda name: fleet.api(name, "POST", "/networks", {"network": network}), names)
        checker = Checker(fleet, {network: names})
        await wait_for(checker.membership_converged, 60, "all hosts alive everywhere")
        await wait_for(lambda: checker.converged(Truth()), 60, f"{network} attached and empty everywhere")
        await checker.baseline()
        try:
            verdict = await body(fleet, checker, nemesis)
        except (AssertionError, FleetError) as exc:  # WaitTimeout is an AssertionError
            where = await leave_evidence(fleet, network, nemesis)
            raise type(exc)(f"{exc} (evidence in {where})") from exc
        failed = False
        return verdict
    finally:
        try:
            await nemesis.heal_all()
        except NemesisError:
            if not failed:  # else the body's failure is the one to show; this one is in the log
                raise
        finally:
            await fleet.each(lambda name: leave(fleet, name, network))  # later scenarios start quiet
            await fleet.close()


async def leave_evidence(fleet: Fleet, network: str, nemesis: Nemesis) -> Path:
    """Every host's view of `network` (its entries, all of them, tombstones and withdrawn too),
    its stats and its agent's log, and the faults applied, as they are now."""
    out = RESULTS_DIR / "scenarios" / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{network}"

    async def snapshot(host: str) -> None:
        where = out / "hosts" / host
        where.mkdir(parents=True, exist_ok=True)
        for name, path in (("entries.json", f"/networks/{network}/entries?all=1"), ("stats.json", "/stats"),
                           ("members.json", "/members")):  # fmt: skip
            try:
                answer = await fleet.api(host, "GET", path, within=10)
            except FleetError as exc:
                answer = {"error": str(exc)}
            (where / name).write_text(json.dumps(answer, indent=1))

    await fleet.each(snapshot)
    for host, text in (await collect_logs(fleet)).items():
        (out / "hosts" / host / "agent.log").write_text(text)
    (out / "faults.json").write_text(json.dumps(nemesis.log, indent=1))
    return out


async def leave(fleet: Fleet, host: str, network: str) -> None:
    """Detach `host` from `network` if it answers; for cleanup, which must not mask a failure."""
    try:
        await fleet.api(host, "DELETE", f"/networks/{network}")
    except FleetError:
        pass  # an agent that does not answer is the body's failure, reported already


def assert_clean(verdict: dict[str, Any]) -> dict[str, Any]:
    """The verdict of a scenario holds; the failure shows the evidence without the bulky parts."""
    evidence = str({k: v for k, v in verdict.items() if k not in ("latency_s", "bytes_out")})
    for kind in ("missing", "unexpected", "wrong", "resurrected", "scope_leaks", "out_of_scope_received"):
        assert verdict[kind] == {}, f"{kind}: {evidence}"
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
