"""Convergence per network scope, against the ground truth of what the workload wrote.

A verdict is data with its evidence: `{"valid": False, "missing": {...}, ...}`. Every wait goes
through `wait_for`, whose timeout says what was awaited and for how long.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gossip_agent.sim.checker import percentile as sim_percentile

from .fleet import Fleet, FleetError
from .history import Truth, Version

EXAMPLES = 5  # keys shown per host and kind of failure
EVIDENCE_TIMEOUT = 10  # seconds a host may take to answer once a run has stopped
# Seconds one poll may wait for a host: a stopped agent must not hold a 5 s wait for a minute.
POLL_TIMEOUT = 5


class WaitTimeout(AssertionError):
    pass


async def wait_for(predicate: Callable[[], Awaitable[Any]], deadline: float, label: str, interval: float = 0.1) -> Any:
    """Poll until `predicate` is truthy. A host that does not answer (an agent restarting) counts
    as "not yet"; the timeout message names what was awaited, how long, and the last such error."""
    started = time.monotonic()
    last_error = ""
    while True:
        try:
            value = await predicate()
        except FleetError as exc:
            value, last_error = None, str(exc)
        if value:
            return value
        if time.monotonic() - started > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise WaitTimeout(f"timed out after {deadline:.0f} s waiting for {label}{detail}")
        await asyncio.sleep(interval)


def percentile(values: list[float], q: float) -> float | None:
    """The simulator's nearest-rank percentile; None rather than NaN for no values (JSON)."""
    return sim_percentile(values, q) if values else None


def latency_summary(values: list[float]) -> dict[str, Any]:
    return {"count": len(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": max(values, default=None)}  # fmt: skip


def since(before: dict[str, float], now: dict[str, float]) -> dict[str, float]:
    """Cumulative figures of an agent minus a baseline; an agent restarted since counts from
    zero again, and then all it counted is of this run."""
    return {k: v - before.get(k, 0) if v >= before.get(k, 0) else v for k, v in now.items()}


class Checker:
    def __init__(self, fleet: Fleet, members: dict[str, list[str]]) -> None:
        self.fleet = fleet
        self.members = members  # network -> hosts attached to it
        self._out_of_scope_before: dict[str, float] = {}
        self._suspected_before: dict[str, float] = {}
        # Host clock minus the harness's, seconds (Fleet.clock_offsets): a delivery's latency is
        # read from two hosts' clocks, the writer's and the reader's, and corrected by both.
        self.offsets: dict[str, float] = {}
        self.latency_by_key: list[tuple[str, float]] = []  # of the last verdict: (key, seconds)

    def _out_of_scope(self, stats: dict[str, Any]) -> dict[str, float]:
        """Per host, dropped messages of this experiment's networks (not of earlier runs' ones)."""
        return {h: sum(s.get("out_of_scope_by_network", {}).get(n, 0) for n in self.members) for h, s in stats.items()}

    async def measure_clocks(self) -> dict[str, tuple[float, float]]:
        """Every host's (clock offset, error); latencies are corrected where the offset exceeds
        its error; below that it is the round trip's noise (the local lab's hosts share one
        clock and read +-10 ms here), which would only blur them."""
        clocks = await self.fleet.clock_offsets()
        self.offsets = {h: offset for h, (offset, error) in clocks.items() if abs(offset) > error}
        return clocks

    @staticmethod
    def _suspected(stats: dict[str, Any]) -> dict[str, float]:
        return {h: s["counters"].get("member_suspected", 0) for h, s in stats.items()}

    async def baseline(self) -> None:
        """Counters are cumulative per agent: remember them, so only this run's count."""
        stats = await self.fleet.each(lambda name: self.fleet.api(name, "GET", "/stats"))
        self._out_of_scope_before = self._out_of_scope(stats)
        self._suspected_before = self._suspected(stats)

    async def membership_converged(self) -> bool:
        views = await self.fleet.each(lambda name: self.fleet.api(name, "GET", "/members", within=POLL_TIMEOUT))
        everyone = set(self.fleet.hosts)
        return all({m["name"] for m in view if m["state"] == "alive"} == everyone for view in views.values())

    async def tables(self) -> dict[str, dict[str, tuple[int, str]]]:
        """member host -> network -> (visible entries, table digest), one cheap API call per host."""

        async def of(name: str) -> dict[str, tuple[int, str]]:
            nets = await self.fleet.api(name, "GET", "/networks", within=POLL_TIMEOUT)
            return {n["network"]: (n["entries"], n["digest"]) for n in nets}

        # Only members are asked: a host outside (paused, say) must not hold up the answer.
        return await self.fleet.each(of, sorted(set().union(*self.members.values())))

    async def converged(self, truth: Truth) -> bool:
        """Every member holds as many entries as the truth allows and the same table (equal
        digests, which also covers tombstones); the verdict compares keys, owners and values."""
        tables = await self.tables()
        for net, hosts in self.members.items():
            held = {tables[host].get(net, (-1, "")) for host in hosts}
            low, high = truth.count_range(net)
            if len(held) != 1 or not low <= next(iter(held))[0] <= high:
                return False
        return True

    async def fractions(self, expected_counts: dict[str, int]) -> dict[str, float]:
        """Per network, the share of (member, entry) pairs held now (entry counts, capped)."""
        tables = await self.tables()
        result = {}
        for net, hosts in self.members.items():
            want = expected_counts[net] * len(hosts)
            have = sum(min(tables[h].get(net, (0, ""))[0], expected_counts[net]) for h in hosts)
            result[net] = have / want if want else 1.0
        return result

    async def _judge(
        self, truth: Truth, fetch: Callable[[str, str], Awaitable[Any]]
    ) -> tuple[dict[str, Any], dict[str, Any], list[tuple[str, float]]]:
        """Every member's dump against the truth: per kind of failure, network -> host -> count;
        example keys (network -> host -> kind -> keys); and (key, latency) of every delivery.
        `fetch` returns None for a host that did not answer, which is skipped."""
        found: dict[str, dict[str, dict[str, int]]] = {k: {} for k in ("missing", "unexpected", "wrong", "resurrected")}
        examples: dict[str, dict[str, dict[str, list[str]]]] = {}
        by_key: list[tuple[str, float]] = []
        for network, hosts in self.members.items():
            dumps = await self.fleet.each(lambda h, p=f"/networks/{network}/entries": fetch(h, p), hosts)
            for host, dump in dumps.items():
                if dump is None:
                    continue
                held = {e["key"]: Version(e["owner"], e["value"]) for e in dump["entries"]}
                for kind, keys in truth.judge(network, held).items():
                    if keys:
                        found[kind].setdefault(network, {})[host] = len(keys)
                        examples.setdefault(network, {}).setdefault(host, {})[kind] = keys[:EXAMPLES]
                skew = self.offsets.get(host, 0.0)
                by_key += [(e["key"], (e["seen_wall_ms"] - e["origin_wall_ms"]) / 1000
                            - skew + self.offsets.get(e["owner"], 0.0))
                           for e in dump["entries"] if e["owner"] != host]  # fmt: skip
        return found, examples, by_key

    async def evidence(self, truth: Truth) -> dict[str, Any]:
        """The verdict of a run that stopped early, from every host that still answers: per
        network and host what is missing, extra or wrong; `unreachable` names the others."""
        unreachable: dict[str, str] = {}

        async def dump(host: str, path: str) -> Any:
            try:
                return await self.fleet.api(host, "GET", path, within=EVIDENCE_TIMEOUT)
            except FleetError as exc:
                unreachable[host] = str(exc)
                return None

        found, examples, _ = await self._judge(truth, dump)
        stats = {h: s for h, s in (await self.fleet.each(lambda h: dump(h, "/stats"))).items() if s is not None}
        return {"valid": False, **found, "examples": examples, "unreachable": unreachable,
                "scope_leaks": {}, "out_of_scope_received": {}, "dropped_after_leaving": {},
                "bytes_out": {h: s["counters"].get("bytes_out", 0) for h, s in stats.items()},
                "suspicions": since(self._suspected_before, self._suspected(stats))}  # fmt: skip

    async def verdict(self, truth: Truth, left: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
        """Every member's table against the truth, key by key with owner and value; scope on
        every host. Hosts in `left` detached from a network during the run: the rumours still in
        flight to them are dropped there, which is the scope guard working, so their drops are
        reported apart and do not fail the verdict."""
        found, examples, by_key = await self._judge(truth, lambda host, path: self.fleet.api(host, "GET", path))
        self.latency_by_key = by_key
        networks_of = await self.fleet.each(lambda name: self.fleet.api(name, "GET", "/networks"))
        # Only this experiment's networks count: hosts may be in others (e.g. the inventory's own).
        leaks = {host: sorted({n["network"] for n in nets if n["network"] in self.members}
                              - {net for net, hs in self.members.items() if host in hs})
                 for host, nets in networks_of.items()}  # fmt: skip
        leaks = {h: n for h, n in leaks.items() if n}
        stats = await self.fleet.each(lambda name: self.fleet.api(name, "GET", "/stats"))
        out_of_scope = since(self._out_of_scope_before, self._out_of_scope(stats))
        after_leaving = {h: out_of_scope.pop(h) for h in left if out_of_scope.get(h)}
        return {
            "valid": not any(found.values()) and not leaks and not any(out_of_scope.values()),
            **found,
            "examples": examples,
            "scope_leaks": leaks,
            "out_of_scope_received": {h: v for h, v in out_of_scope.items() if v},
            "dropped_after_leaving": after_leaving,
            "latency_s": latency_summary([seconds for _, seconds in by_key]),
            "bytes_out": {h: s["counters"].get("bytes_out", 0) for h, s in stats.items()},
            # Members this host suspected during the run: a busy agent that cannot answer probes
            # in time shows here first (moby#52661 at 50 hosts), long before anything is lost.
            "suspicions": since(self._suspected_before, self._suspected(stats)),
        }
