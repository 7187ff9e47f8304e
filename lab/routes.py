"""Routes: the VXLAN data plane's kernel state on every host judged against the truth, and packets
between containers.

Every host of a network with VXLAN id V must hold on its device gvx-V one forwarding (fdb) entry
MAC -> VTEP and one permanent neighbour entry IP -> MAC for each container of the network on
another host, and nothing else: an entry left behind is moby#52661's stale route. The kernel is
read over SSH with `bridge -j fdb` and `ip -j neigh`; the agent's own account is not taken.
Packets: sampled pings between containers of one network on different hosts must pass, and
from a container to an address that only another network has must not.
"""

from __future__ import annotations

import asyncio
import json
import random
import shlex
import time
from dataclasses import dataclass
from typing import Any

from .fleet import Fleet
from .history import Truth, Version

EXAMPLES = 5
PINGS = 40  # sampled pings per kind (within a network, across networks)
PING_WAIT = 2  # seconds one ping waits for its answer


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A container as its endpoint entry describes it (the entry's key is its address)."""

    ip: str
    mac: str
    vtep: str
    container: str

    @classmethod
    def of(cls, ip: str, version: Version | None) -> Endpoint | None:
        if version is None:
            return None
        try:
            value = json.loads(version.value)
            return cls(ip, value["mac"], value["vtep"], value["container"])
        except (ValueError, KeyError, TypeError):
            return None  # not an endpoint of the data plane (another table's entry)


@dataclass
class Kernel:
    """One vxlan device's remote entries as the kernel holds them."""

    fdb: dict[str, set[str]]  # MAC -> VTEPs (more than one: the device sends to each)
    neigh: dict[str, str]  # IP -> MAC (permanent entries)


def parse_kernel(fdb_json: str, neigh_json: str) -> Kernel:
    """`bridge -j fdb show dev gvx-V` and `ip -j neigh show dev gvx-V`; entries without a remote
    (the device's own address, what the bridge learned) are not the agent's and not judged."""
    fdb: dict[str, set[str]] = {}
    for e in json.loads(fdb_json or "[]"):
        if "dst" in e:
            fdb.setdefault(e["mac"], set()).add(e["dst"])
    neigh = {e["dst"]: e.get("lladdr", "") for e in json.loads(neigh_json or "[]") if "PERMANENT" in e.get("state", [])}
    return Kernel(fdb, neigh)


def endpoint_states(truth: Truth, network: str) -> dict[str, set[Endpoint | None]]:
    """Every container address of `network` the truth knows, with each state it may be in."""
    states: dict[str, set[Endpoint | None]] = {}
    for ip, version in truth.expected.get(network, {}).items():
        states[ip] = {Endpoint.of(ip, version)}
    for ip, versions in truth.unsure.get(network, {}).items():
        states[ip] = {Endpoint.of(ip, v) for v in versions}
    return states


def judge(states: dict[str, set[Endpoint | None]], host_vtep: str, kernel: Kernel) -> dict[str, list[str]]:
    """One host's device against the model. `missing`: a container surely on another host has not
    both its entries, exactly; `stale`: an entry that no possible state of the network explains
    (a deleted container's, one pointing at the wrong host, one of this host's own containers,
    which the bridge reaches directly). A wrong entry is both."""
    missing = []
    allowed_fdb: set[tuple[str, str]] = set()
    allowed_neigh: set[tuple[str, str]] = set()
    for ip, possible in states.items():
        remote = [e for e in possible if e is not None and e.vtep != host_vtep]
        allowed_fdb.update((e.mac, e.vtep) for e in remote)
        allowed_neigh.update((ip, e.mac) for e in remote)
        if len(possible) == 1 and remote:
            (e,) = remote
            if kernel.fdb.get(e.mac) != {e.vtep} or kernel.neigh.get(ip) != e.mac:
                missing.append(ip)
    stale = [f"fdb {mac} -> {vtep}" for mac, vteps in sorted(kernel.fdb.items()) for vtep in sorted(vteps)
             if (mac, vtep) not in allowed_fdb]  # fmt: skip
    stale += [f"neigh {ip} -> {mac}" for ip, mac in sorted(kernel.neigh.items()) if (ip, mac) not in allowed_neigh]
    return {"missing": sorted(missing), "stale": stale}


class Routes:
    def __init__(self, fleet: Fleet, members: dict[str, list[str]], vxlan: dict[str, int]) -> None:
        self.fleet = fleet
        self.members = members  # network -> hosts attached (shared with the Checker)
        self.vxlan = vxlan  # network -> VXLAN id

    def vtep(self, host: str) -> str:
        return self.fleet.hosts[host].address

    async def ready(self) -> bool:
        """Every member's data plane is on for its networks (the agent makes the devices in the
        background after an attach)."""

        async def on(host: str) -> bool:
            networks = await self.fleet.api(host, "GET", "/networks")
            state = {n["network"]: n.get("dataplane") for n in networks}
            return all(state.get(n) == "on" for n, hosts in self.members.items() if host in hosts and n in self.vxlan)

        return all((await self.fleet.each(on)).values())

    async def kernel(self, host: str) -> dict[str, Kernel]:
        """The host's remote entries of each of its networks, one SSH command for all."""
        networks = [n for n, hosts in self.members.items() if host in hosts and n in self.vxlan]
        script = "; ".join(f"bridge -j fdb show dev gvx-{self.vxlan[n]} 2>/dev/null || echo '[]'; "
                           f"ip -j neigh show dev gvx-{self.vxlan[n]} 2>/dev/null || echo '[]'"
                           for n in networks)  # fmt: skip
        if not networks:
            return {}
        lines = [line for line in (await self.fleet.run(host, script)).stdout.splitlines() if line.strip()]
        return {n: parse_kernel(lines[2 * i], lines[2 * i + 1]) for i, n in enumerate(networks)}

    async def verdict(self, truth: Truth) -> dict[str, Any]:
        """Per kind (missing, stale): network -> host -> count, and example entries."""
        found: dict[str, dict[str, dict[str, int]]] = {"missing": {}, "stale": {}}
        examples: dict[str, dict[str, dict[str, list[str]]]] = {}
        hosts = sorted({h for n, hs in self.members.items() if n in self.vxlan for h in hs})
        kernels = await self.fleet.each(self.kernel, hosts)
        for network in sorted(self.vxlan):
            states = endpoint_states(truth, network)
            for host in self.members.get(network, []):
                for kind, entries in judge(states, self.vtep(host), kernels[host][network]).items():
                    if entries:
                        found[kind].setdefault(network, {})[host] = len(entries)
                        examples.setdefault(network, {}).setdefault(host, {})[kind] = entries[:EXAMPLES]
        return {"valid": not any(found.values()), **found, "examples": examples}

    async def settled_verdict(self, truth: Truth, seconds: float) -> dict[str, Any]:
        """The first valid verdict within `seconds`, else the last: routes may flap for a moment
        after a heal (a member falsely declared dead loses its routes everywhere until it
        refutes), and a final judgement must not be a snapshot of that moment."""
        deadline = time.monotonic() + seconds
        while True:
            verdict = await self.verdict(truth)
            if verdict["valid"] or time.monotonic() > deadline:
                return verdict
            await asyncio.sleep(0.2)

    async def converged(self, truth: Truth) -> bool:
        return bool((await self.verdict(truth))["valid"])

    def sample(self, truth: Truth, rng: random.Random, size: int) -> list[tuple[str, Endpoint, str, bool]]:
        """Up to `size` pings per kind, drawn by `rng`: (source host, source container, address,
        must it answer). Within a network: containers on different hosts. Across: an address
        that only another network has, so nothing but a leak between networks could answer."""
        sure = {n: [e for states in endpoint_states(truth, n).values() if len(states) == 1
                    for e in states if e is not None] for n in self.vxlan}  # fmt: skip
        owner = {self.vtep(h): h for h in self.fleet.hosts}
        within = [(owner[a.vtep], a, b.ip, True) for n, eps in sure.items() for a in eps for b in eps
                  if a.vtep != b.vtep and a.vtep in owner]  # fmt: skip
        across = [(owner[a.vtep], a, b.ip, False) for n, eps in sure.items() for m, others in sure.items() if m != n
                  for a in eps for b in others
                  if a.vtep in owner and b.ip not in {e.ip for e in eps}]  # fmt: skip
        return rng.sample(within, min(size, len(within))) + rng.sample(across, min(size, len(across)))

    async def wrong_pings(
        self, truth: Truth, rng: random.Random, size: int, deleted: dict[str, set[str]] | None = None
    ) -> list[dict[str, Any]]:
        """The sampled pings (`sample`), and pings from a live container of each network to the
        addresses its deleted containers had (and no live one has again), which nothing may
        answer: those that went wrong."""
        pairs = self.sample(truth, rng, size)
        owner = {self.vtep(h): h for h in self.fleet.hosts}
        for network, addresses in sorted((deleted or {}).items()):
            live = truth.keys(network)
            states = endpoint_states(truth, network)
            source = next((e for ip in sorted(live) for e in states[ip] if e is not None), None)
            if source is not None:
                pairs += [(owner[source.vtep], source, ip, False) for ip in sorted(addresses - live)[:size]]
        return [r for r in await self.ping(pairs) if not r["right"]]

    async def ping(self, pairs: list[tuple[str, Endpoint, str, bool]]) -> list[dict[str, Any]]:
        """Send every ping (all of one source host at once, in one SSH command); each result says
        whether it answered and whether that was right."""
        by_host: dict[str, list[int]] = {}
        for i, (host, *_) in enumerate(pairs):
            by_host.setdefault(host, []).append(i)

        async def run(host: str) -> dict[int, tuple[bool, float]]:
            jobs = " ".join(
                f"(ip netns exec {shlex.quote(pairs[i][1].container)} ping -c 1 -W {PING_WAIT} -q "
                f"{shlex.quote(pairs[i][2])} >/dev/null 2>&1; echo {i} $? $(date +%s.%N)) &"
                for i in by_host[host]
            )
            out = (await self.fleet.run(host, f"{jobs} wait")).stdout
            lines = (line.split() for line in out.splitlines() if line.strip())
            return {int(i): (rc == "0", float(at)) for i, rc, at in lines}

        answered: dict[int, tuple[bool, float]] = {}
        for result in (await self.fleet.each(run, sorted(by_host))).values():
            answered.update(result)
        # `at`: the host's wall clock when the ping ended (the answer, or giving up).
        return [{"from": h, "container": src.container, "to": ip, "must_answer": must,
                 "answered": answered[i][0] if i in answered else None, "at": answered.get(i, (None, None))[1],
                 "right": i in answered and answered[i][0] is must}
                for i, (h, src, ip, must) in enumerate(pairs)]  # fmt: skip
