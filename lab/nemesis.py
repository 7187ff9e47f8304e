"""Faults applied on the hosts themselves, as on real machines: nftables partitions and loss,
kill -9 of the agent. Every fault has its heal; `heal_all` removes every trace and is safe to
call at any time (scenarios call it in `finally`)."""

from __future__ import annotations

import shlex

from .fleet import Fleet

TABLE = "inet sgl_nemesis"  # the project prefix: nothing else on a host is touched


def _ruleset(blocked: list[str], loss_percent: int = 0) -> str:
    # One statement per line: nft does not parse them joined on one line inside braces.
    elements = ", ".join(blocked) if blocked else ""
    lines = [f"table {TABLE} {{"]
    if elements:
        lines += [f"  set blocked {{ type ipv4_addr; elements = {{ {elements} }}; }}"]
    for hook, match in (("input", "saddr"), ("output", "daddr")):
        lines += [f"  chain {hook} {{", f"    type filter hook {hook} priority 0; policy accept;"]
        if elements:
            lines += [f"    ip {match} @blocked drop"]
        if loss_percent:
            lines += [f"    udp dport 7946 numgen random mod 100 < {loss_percent} drop"]
        lines += ["  }"]
    lines += ["}"]
    return "\n".join(lines) + "\n"


class Nemesis:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.log: list[dict[str, object]] = []

    async def _apply(self, host: str, ruleset: str) -> None:
        command = f"nft delete table {TABLE} 2>/dev/null; printf %s {shlex.quote(ruleset)} | nft -f -"
        await self.fleet.run(host, command)

    async def partition(self, groups: list[list[str]]) -> None:
        """Each host drops all traffic to and from hosts outside its own group."""
        address = {n: h.address for n, h in self.fleet.hosts.items()}
        side = {name: i for i, group in enumerate(groups) for name in group}
        await self.fleet.each(
            lambda name: self._apply(name, _ruleset([address[o] for o in address if side.get(o) != side.get(name)]))
        )
        self.log.append({"fault": "partition", "groups": groups})

    def halves(self) -> list[list[str]]:
        names = sorted(self.fleet.hosts)
        return [names[: len(names) // 2], names[len(names) // 2 :]]

    async def loss(self, percent: int) -> None:
        await self.fleet.each(lambda name: self._apply(name, _ruleset([], percent)))
        self.log.append({"fault": "loss", "percent": percent})

    async def kill(self, host: str) -> None:
        """kill -9 the agent; its supervisor restarts it."""
        await self.fleet.run(host, "kill -9 $(cat /run/gossip-agent/agent.pid)")
        self.log.append({"fault": "kill", "host": host})

    async def heal_all(self) -> None:
        await self.fleet.run_all(f"nft delete table {TABLE} 2>/dev/null || true", check=False)
        self.log.append({"fault": "heal"})
