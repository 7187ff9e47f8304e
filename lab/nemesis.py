"""Faults applied on the hosts themselves, as on real machines: nftables partitions (Jepsen's
shapes, symmetric or not) and loss, delay through the agent's fault hook (the kernel has no netem),
kill -9, SIGSTOP/SIGCONT, restart and rolling restart. Every fault has its heal; `heal_all`
removes every trace, checks that it did, and is safe to call at any time (the harness calls it
first, for what a killed harness left behind, and in `finally`).

Network faults compose: the nemesis keeps the partition and the loss in force and programs each
host's whole ruleset from both, in one table named after the lab (`<prefix>_nemesis`), replaced
in one `nft -f` transaction so no packet ever meets a half-built ruleset."""

from __future__ import annotations

import asyncio
import random
import shlex
import time
from typing import Any

from gossip_agent.sim.partitions import Partition, partition

from .fleet import Fleet, FleetError

GOSSIP_PORT = 7946
RESTART = (
    "if [ -d /run/systemd/system ]; then systemctl restart gossip-agent; "
    "else /opt/gossip-agent/bin/gossip-agent-service restart; fi"
)


def signal_agent(signal: str) -> str:
    """A shell command sending SIGNAL (KILL, STOP, CONT) to the agent's process, whichever
    supervisor the host has: systemd (it restarts the agent after a KILL) or the role's own."""
    return (
        f"if [ -d /run/systemd/system ]; then systemctl kill --kill-whom=main --signal={signal} gossip-agent; "
        f"else kill -{signal} $(cat /run/gossip-agent/agent.pid); fi"
    )


class NemesisError(FleetError):
    """A heal could not be confirmed on some hosts: the lab may still be faulty."""


def ruleset(table: str, drop_to: list[str], drop_from: list[str], loss_percent: int = 0) -> str:
    """The whole table, replacing what was there in the same transaction (nft applies a file
    atomically; declaring the table first lets the delete succeed when it did not exist)."""
    # One statement per line: nft does not parse them joined on one line inside braces.
    lines = [f"table {table}", f"delete table {table}", f"table {table} {{"]
    for hook, match, addresses in (("input", "saddr", drop_from), ("output", "daddr", drop_to)):
        lines += [f"  chain {hook} {{", f"    type filter hook {hook} priority 0; policy accept;"]
        if addresses:
            lines += [f"    ip {match} {{ {', '.join(addresses)} }} drop"]
        if loss_percent and hook == "input":  # once per datagram: at both ends 10 % would be 19 %
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
        # Named after the lab: two labs' harnesses never touch each other's rules.
        self.table = f"inet {'_'.join(sorted({h.lab for h in fleet.hosts.values()}))}_nemesis"
        self.cut: Partition | None = None  # network faults in force, programmed together
        self.loss_percent = 0

    def _record(self, fault: str, **detail: Any) -> None:
        self.log.append({"fault": fault, "at": time.time(), **detail})

    async def _program(self) -> None:
        """Every host's ruleset from the partition and the loss in force, each in one transaction."""
        address = {n: h.address for n, h in self.fleet.hosts.items()}
        cut, loss = self.cut, self.loss_percent  # one view for every host, whatever changes meanwhile

        async def apply(name: str) -> None:
            drop_to = [address[o] for o in address if o != name and cut and cut.blocked(name, o)]
            drop_from = [address[o] for o in address if o != name and cut and cut.blocked(o, name)]
            rules = ruleset(self.table, drop_to, drop_from, loss)
            await self.fleet.run(name, f"printf %s {shlex.quote(rules)} | nft -f -")

        await self.fleet.each(apply)

    def shape(self, shape: str, symmetric: bool = True) -> Partition:
        names = sorted(self.fleet.hosts)
        if shape == "random-halves":
            self.rng.shuffle(names)
        return partition(shape, names, symmetric)

    async def partition(self, cut: Partition) -> None:
        """Each host drops what `cut` blocks, at both ends: its own output and its own input.
        Loss in force stays; a partition in force is replaced."""
        self.cut = cut
        await self._program()
        self._record("partition", shape=cut.shape, groups=cut.groups)

    async def loss(self, percent: int) -> None:
        """Drop `percent` % of the gossip datagrams arriving at every host (nftables numgen)."""
        if not 0 < percent < 100:
            raise ValueError(f"loss must be between 1 and 99 percent, not {percent}")
        self.loss_percent = percent  # a partition in force stays
        await self._program()
        self._record("loss", percent=percent)

    async def clear_partition(self) -> None:
        """End the partition in force; loss in force stays."""
        self.cut = None
        await self._program()
        self._record("partition-end")

    async def clear_loss(self) -> None:
        """End the loss in force; a partition in force stays."""
        self.loss_percent = 0
        await self._program()
        self._record("loss-end")

    async def clear_delay(self) -> None:
        """Clear every agent's fault hook (delay); raises naming the hosts where it failed."""
        problems = {h: p for h, p in (await self.fleet.each(self._clear_faults)).items() if p}
        self._record("delay-end", problems=problems)
        if problems:
            raise NemesisError("; ".join(f"{h}: {p}" for h, p in sorted(problems.items())))

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
        await self.fleet.run(host, signal_agent("KILL"))
        self._record("kill", host=host)

    async def pause(self, host: str) -> None:
        """SIGSTOP the agent: alive to the kernel, silent to its peers (a long GC or a stuck VM)."""
        await self.fleet.run(host, signal_agent("STOP"))
        self.paused.add(host)
        self._record("pause", host=host)

    async def resume(self, host: str) -> None:
        await self.fleet.run(host, signal_agent("CONT"))
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
        """No partition, loss, delay or pause is left on any host: every agent is resumed (a killed
        harness may have left some stopped), every nemesis table deleted and its absence checked,
        every agent's fault hook cleared. Raises NemesisError naming the hosts where that could
        not be confirmed, after doing all it could."""
        self.cut, self.loss_percent = None, 0
        self.paused.clear()
        # Gone only if nft itself answers without it: a failing nft must not read as healed.
        table = self.table
        clear = (f"{{ {signal_agent('CONT')}; }} 2>/dev/null; nft delete table {table} 2>/dev/null; "
                 f"tables=$(nft list tables) && ! printf '%s\\n' \"$tables\" | grep -qxF 'table {table}'")  # fmt: skip
        results = await self.fleet.each(lambda host: self._try(self.fleet.run(host, clear, check=False)))
        problems = {h: r if isinstance(r, str) else "nemesis table still there" for h, r in results.items()
                    if isinstance(r, str) or r.rc != 0}  # fmt: skip
        hooks = await self.fleet.each(self._clear_faults)
        problems.update({h: problem for h, problem in hooks.items() if problem})
        self._record("heal", problems=problems)
        if problems:
            raise NemesisError("heal not confirmed on " + "; ".join(f"{h}: {p}" for h, p in sorted(problems.items())))

    @staticmethod
    async def _try(action: Any) -> Any:
        """The action's result, or its failure as a message."""
        try:
            return await action
        except FleetError as exc:
            return str(exc)

    async def _clear_faults(self, host: str, attempts: int = 3) -> str:
        """Clear the agent's fault hook; "" when done, else why not. An agent restarting after a
        kill answers within seconds (and starts without faults); one that never answers may
        still be delaying or dropping."""
        error = ""
        for _ in range(attempts):
            try:
                await self.fleet.api(host, "DELETE", "/faults", within=5)
                return ""
            except FleetError as exc:
                error = f"fault hook not cleared: {exc}"
                await asyncio.sleep(1.0)
        return error
