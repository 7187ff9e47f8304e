"""Faults applied on the hosts themselves, as on real machines: nftables partitions (Jepsen's
shapes, symmetric or not) and loss, delay through the agent's fault hook (the kernel has no netem),
kill -9, SIGSTOP/SIGCONT, restart and rolling restart. Every fault has its heal; `heal_all`
removes every trace and is safe to call at any time (the harness calls it in `finally`)."""

from __future__ import annotations

import asyncio
import random
import shlex
import time
from typing import Any

from gossip_agent.sim.partitions import Partition, partition

from .fleet import Fleet, FleetError

TABLE = "inet sgl_nemesis"  # the project prefix: nothing else on a host is touched
GOSSIP_PORT = 7946
AGENT_PID = "$(cat /run/gossip-agent/agent.pid)"
RESTART = (
    "if [ -d /run/systemd/system ]; then systemctl restart gossip-agent; "
    "else /opt/gossip-agent/bin/gossip-agent-service restart; fi"
)


def ruleset(drop_to: list[str], drop_from: list[str], loss_percent: int = 0) -> str:
    # One statement per line: nft does not parse them joined on one line inside braces.
    lines = [f"table {TABLE} {{"]
    for hook, match, addresses in (("input", "saddr", drop_from), ("output", "daddr", drop_to)):
        lines += [f"  chain {hook} {{", f"    type filter hook {hook} priority 0; policy accept;"]
        if addresses:
            lines += [f"    ip {match} {{ {', '.join(addresses)} }} drop"]
        if loss_percent:
            lines += [f"    udp dport {GOSSIP_PORT} numgen random mod 100 < {loss_percent} drop"]
        lines += ["  }"]
    lines += ["}"]
    return "\n".join(lines) + "\n"


class Nemesis:
    def __init__(self, fleet: Fleet, seed: int = 0) -> None:
        self.fleet = fleet
        self.rng = random.Random(seed)  # only random-halves draws from it
        self.log: list[dict[str, Any]] = []
        self.paused: set[str] = set()

    def _record(self, fault: str, **detail: Any) -> None:
        self.log.append({"fault": fault, "at": time.time(), **detail})

    async def _apply(self, host: str, rules: str) -> None:
        command = f"nft delete table {TABLE} 2>/dev/null; printf %s {shlex.quote(rules)} | nft -f -"
        await self.fleet.run(host, command)

    def shape(self, shape: str, symmetric: bool = True) -> Partition:
        names = sorted(self.fleet.hosts)
        if shape == "random-halves":
            self.rng.shuffle(names)
        return partition(shape, names, symmetric)

    async def partition(self, cut: Partition) -> None:
        """Each host drops what `cut` blocks, at both ends: its own output and its own input."""
        address = {n: h.address for n, h in self.fleet.hosts.items()}

        async def apply(name: str) -> None:
            drop_to = [address[o] for o in address if o != name and cut.blocked(name, o)]
            drop_from = [address[o] for o in address if o != name and cut.blocked(o, name)]
            await self._apply(name, ruleset(drop_to, drop_from))

        await self.fleet.each(apply)
        self._record("partition", shape=cut.shape, groups=cut.groups)

    async def loss(self, percent: int) -> None:
        """Drop `percent` % of gossip datagrams arriving at and leaving every host (nftables numgen)."""
        if not 0 < percent < 100:
            raise ValueError(f"loss must be between 1 and 99 percent, not {percent}")
        await self.fleet.each(lambda name: self._apply(name, ruleset([], [], percent)))
        self._record("loss", percent=percent)

    async def delay(self, milliseconds: int, hosts: list[str] | None = None) -> None:
        """Every datagram the given hosts send to any other host waits this long (agent fault hook)."""
        others = {n: h.address for n, h in self.fleet.hosts.items()}

        async def slow(name: str) -> None:
            for peer, address in others.items():
                if peer != name:
                    await self.fleet.api(name, "PUT", "/faults", {"peer": address, "delay_ms": milliseconds})

        await self.fleet.each(slow, hosts)
        self._record("delay", ms=milliseconds, hosts=hosts or sorted(self.fleet.hosts))

    async def kill(self, host: str) -> None:
        """kill -9 the agent; its supervisor restarts it."""
        await self.fleet.run(host, f"kill -9 {AGENT_PID}")
        self._record("kill", host=host)

    async def pause(self, host: str) -> None:
        """SIGSTOP the agent: alive to the kernel, silent to its peers (a long GC or a stuck VM)."""
        await self.fleet.run(host, f"kill -STOP {AGENT_PID}")
        self.paused.add(host)
        self._record("pause", host=host)

    async def resume(self, host: str) -> None:
        await self.fleet.run(host, f"kill -CONT {AGENT_PID}")
        self.paused.discard(host)
        self._record("resume", host=host)

    async def restart(self, host: str) -> None:
        """A graceful restart: the agent leaves, comes back with its journal and rejoins."""
        await self.fleet.run(host, RESTART)
        self._record("restart", host=host)

    async def rolling_restart(self, hosts: list[str], gap: float = 1.0) -> None:
        for host in hosts:
            await self.restart(host)
            await asyncio.sleep(gap)

    async def heal_all(self) -> None:
        """No partition, loss, delay or pause is left on any host that answers."""
        for host in sorted(self.paused):
            await self.fleet.run(host, f"kill -CONT {AGENT_PID}", check=False)
        self.paused.clear()
        await self.fleet.run_all(f"nft delete table {TABLE} 2>/dev/null || true", check=False)
        await self.fleet.each(self._clear_faults)
        self._record("heal")

    async def _clear_faults(self, host: str) -> None:
        try:
            await self.fleet.api(host, "DELETE", "/faults", within=5)
        except FleetError:
            pass  # an agent restarting after a kill starts without faults; a stopped one has none
