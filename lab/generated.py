"""Generated lab runs: the simulator's schedule generator (gossip_agent.sim.schedule) drives real
hosts, and the same checker judges them.

    python -m lab.experiment --random --seed 7 [--duration 30] [--inventory inventories/prod]

From the seed, `generate` draws the networks (each a subset of the hosts), timed writes, updates
and deletes of single entries, bursts and burst deletes, detaches and re-attaches (at once or
later: moby#47728), kill -9, graceful restarts, pauses, partitions of every shape (symmetric or
not, overlapping, flapping), loss and delay, each fault with its own end. Kinds the lab cannot do
on live agents are left out of the draw: new lives (a journal wiped under a running agent) and
duplicated, corrupted, replayed or forged datagrams (the simulator's job). A supervisor restarts
a killed agent by itself, so `start` steps are no-ops here.

Every step is recorded in the history with its outcome; the run then heals everything, waits for
convergence and takes the verdict, or stops and publishes its evidence, exactly as a spec does.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gossip_agent.sim.partitions import partition
from gossip_agent.sim.schedule import TABLE, Knobs, Schedule, Step, generate

from .checker import EVIDENCE_TIMEOUT, Checker, latency_summary, wait_for
from .churn import Churn
from .experiment import STOPS, Say, harness_cost, run_published, spent_since, stats_of_each, why_stopped
from .fleet import ApiRefused, Fleet, FleetError
from .history import History, Truth, Version
from .inventory import load
from .nemesis import Nemesis
from .spec import Spec, SpecError

LAB_KINDS = ("write", "delete", "burst", "delete-burst", "attach", "detach",
             "crash", "leave", "pause", "partition", "loss", "delay")  # fmt: skip
CONVERGE_WITHIN = 120.0  # seconds after the last step and the final heal


def lab_schedule(seed: int, hosts: int, duration: float) -> Schedule:
    """The generator's schedule of `seed` for this many hosts, with what a lab can do."""
    knobs = Knobs(nodes=(hosts, hosts), active=(duration, duration), cold_start=0.0, kinds=LAB_KINDS)
    return generate(seed, knobs)


class GeneratedRun:
    def __init__(self, schedule: Schedule, fleet: Fleet, log: Say) -> None:
        self.schedule, self.fleet, self.log = schedule, fleet, log
        hosts = sorted(fleet.hosts)
        self.host = dict(zip(schedule.nodes, hosts, strict=True))  # the generator's n1.. -> hosts
        self.network = {n: f"g{schedule.seed}-{n}" for n in schedule.networks}
        # Who is in each network now; attaches and detaches change it, and the checker reads it.
        self.members = {self.network[n]: sorted(self.host[m] for m in ms) for n, ms in schedule.networks.items()}
        self.left: set[str] = set()  # hosts that detached from a network during the run
        self.unsettled: set[tuple[str, str]] = set()  # (host, network) of an attach/detach of unknown outcome
        self.history = History()
        self.churn = Churn(fleet, self.history, strict=False)
        self.nemesis = Nemesis(fleet, schedule.seed)
        self.checker = Checker(fleet, self.members)
        self.bursts: dict[tuple[str, str, str], int] = {}  # (host, network, prefix) -> entries
        self.locks: dict[tuple[str, str], asyncio.Lock] = {}  # (network, key or prefix)
        self.seats: dict[tuple[str, str], asyncio.Lock] = {}  # (host, network)
        self.cuts = self.losses = 0  # applied so far: a fault's end heals only if no later one replaced it
        self.started = 0.0
        self.pending: list[asyncio.Task[None]] = []  # steps and fault ends, each at its time
        self.where = "preparing the networks"  # what the run is doing: a stopped run says where
        self.clocks: dict[str, tuple[float, float]] = {}  # host -> (clock offset, its error), seconds

    async def prepare(self) -> None:
        """This run's networks, fresh: left first where a previous run of the seed attached them."""

        async def fresh(host: str, network: str) -> None:
            try:
                await self.fleet.api(host, "DELETE", f"/networks/{network}")
            except ApiRefused:
                pass  # not attached: nothing to leave
            await self.fleet.api(host, "POST", "/networks", {"network": network})

        async def leave(host: str, network: str) -> None:
            try:
                await self.fleet.api(host, "DELETE", f"/networks/{network}")
            except ApiRefused:
                pass

        for network, hosts in self.members.items():
            await self.fleet.each(lambda h, n=network: fresh(h, n), hosts)
            await self.fleet.each(lambda h, n=network: leave(h, n), sorted(set(self.fleet.hosts) - set(hosts)))
        await wait_for(self.checker.membership_converged, 60, "every host to see every host alive")
        await wait_for(lambda: self.checker.converged(Truth()), 60, "empty networks on every member")
        await self.checker.baseline()
        self.clocks = await self.checker.measure_clocks()

    async def step(self, step: Step) -> None:
        """One step at its time; its outcome goes to the history (and the truth)."""
        host, network = self.host.get(step.node, ""), self.network.get(step.network, "")
        if step.kind == "start":
            return  # a supervisor restarts killed agents by itself
        if not network:
            await self._fault(step, host)
            return
        # A host's operations on one network wait for its attach or detach there, and one key's
        # (or burst prefix's) run one after another: the truth takes them in the order they
        # complete, which is then the order they applied.
        seat = self.seats.setdefault((host, network), asyncio.Lock())
        if step.kind in ("attach", "detach"):
            async with seat:
                await self._membership(step.kind, host, network)
            return
        if host not in self.members[network]:
            return  # the generator draws any node; one outside the network is refused (sim tests that)
        async with seat, self.locks.setdefault((network, step.key), asyncio.Lock()):
            if step.kind in ("write", "delete"):
                await self._single(step, host, network)
            elif step.kind == "burst":
                self.bursts[(host, network, step.key)] = step.count
                await self.churn.create(host, network, step.count, step.key)
            else:  # delete-burst
                await self.churn.delete(host, network, self.bursts.get((host, network, step.key), 0) or 1, step.key)

    async def _single(self, step: Step, host: str, network: str) -> None:
        path = f"/networks/{network}/entries"
        if step.kind == "write":
            body = {"entries": [{"table": TABLE, "key": step.key, "value": step.value}]}
            invoked = self.history.invoke("write", host, network=network, key=step.key, value=step.value)
        else:
            body = {"entries": [{"table": TABLE, "key": step.key}]}
            invoked = self.history.invoke("delete", host, network=network, key=step.key)
        outcome, detail = "info", {"error": "cancelled"}  # a run stopped meanwhile: it may land
        try:
            await self.fleet.api(host, "POST" if step.kind == "write" else "DELETE", path, body, within=10)
            outcome, detail = "ok", {}
        except ApiRefused as exc:  # validated and refused whole (a delete of a key not there)
            outcome, detail = "fail", {"error": str(exc)}
        except FleetError as exc:  # no answer: a killed or paused agent may still apply it
            detail = {"error": str(exc)}
        finally:
            self.history.complete(invoked, outcome, **detail)
            if step.kind == "write":
                self.churn.truth.wrote(network, {step.key: Version(host, step.value)}, outcome)
            else:
                self.churn.truth.removed(network, {step.key}, outcome)

    async def _membership(self, kind: str, host: str, network: str) -> None:
        """Attach or detach; the checker's member sets follow what certainly happened, and an
        unknown outcome is settled at the end by asking the host."""
        invoked = self.history.invoke(kind, host, network=network)
        outcome, detail = "info", {"error": "cancelled"}
        try:
            if kind == "attach":
                await self.fleet.api(host, "POST", "/networks", {"network": network}, within=10)
            else:
                await self.fleet.api(host, "DELETE", f"/networks/{network}", within=10)
            outcome, detail = "ok", {}
        except ApiRefused as exc:  # a detach from a network the host is not in
            outcome, detail = "fail", {"error": str(exc)}
        except FleetError as exc:
            detail = {"error": str(exc)}
        finally:
            self.history.complete(invoked, outcome, **detail)
            if kind == "detach" and outcome != "fail":
                self.left.add(host)
                self.churn.truth.detached(network, host, outcome)
            if outcome == "info":
                self.unsettled.add((host, network))
            elif outcome == "ok":
                self.unsettled.discard((host, network))
                self._set_member(host, network, kind == "attach")

    def _set_member(self, host: str, network: str, attached: bool) -> None:
        members = self.members[network]
        if attached and host not in members:
            members.append(host)
            members.sort()
        elif not attached and host in members:
            members.remove(host)

    async def _settle_membership(self) -> None:
        """Whether an attach or detach of unknown outcome happened: the host knows by now."""
        for host, network in sorted(self.unsettled):
            asked = self.history.invoke("read-membership", host, network=network)
            networks = await self.fleet.api(host, "GET", "/networks", within=EVIDENCE_TIMEOUT)
            attached = any(n["network"] == network for n in networks)
            self.history.complete(asked, "ok", attached=attached)
            self._set_member(host, network, attached)
        self.unsettled.clear()

    async def _fault(self, step: Step, host: str) -> None:
        n = self.nemesis
        invoked = self.history.invoke(step.kind, "nemesis", **step.to_dict())
        try:
            if step.kind == "crash":
                await n.kill(host)
            elif step.kind == "leave":
                await n.restart(host)
            # Each fault's end is set before the fault: one that half-failed still ends.
            elif step.kind == "pause":
                self._at(step.until, lambda: n.resume(host))
                await n.pause(host)
            elif step.kind == "partition":
                self.cuts += 1
                mine = self.cuts  # a later partition replaces this one, and its end is the later's
                self._at(step.until, lambda: n.clear_partition() if self.cuts == mine else asyncio.sleep(0))
                await n.partition(partition(step.shape, [self.host[o] for o in step.order], step.symmetric))
            elif step.kind == "loss":
                self.losses += 1
                mine = self.losses
                self._at(step.until, lambda: n.clear_loss() if self.losses == mine else asyncio.sleep(0))
                await n.loss(max(1, min(99, round(step.probability * 100))))
            elif step.kind == "delay":
                self._at(step.until, n.clear_delay)
                await n.delay(round(step.high * 1000))
        except FleetError as exc:
            self.history.complete(invoked, "info", error=str(exc))
            return
        self.history.complete(invoked, "ok")

    def _at(self, at: float, action: Any) -> None:
        async def later() -> None:
            await asyncio.sleep(max(0.0, self.started + at - time.monotonic()))
            try:
                await action()
            except FleetError:
                pass  # the final heal_all clears it and checks that it did

        self.pending.append(asyncio.create_task(later()))

    async def run(self) -> dict[str, Any]:
        stopped: dict[str, Any] | None = None
        verdict: dict[str, Any] = {}
        converged_after = None
        try:
            await self.prepare()
            self.where = "running the schedule"
            self.started = time.monotonic()
            for step in self.schedule.steps:
                self._at(step.at, lambda s=step: self.step(s))
            self.log(f"{len(self.schedule.steps)} steps over {self.schedule.quiet_at:.0f} s")
            await asyncio.sleep(max(0.0, self.started + self.schedule.quiet_at - time.monotonic()))
            while not all(task.done() for task in self.pending):  # ends added meanwhile too
                await asyncio.gather(*self.pending)
            self.where = f"healing and waiting {CONVERGE_WITHIN:g} s for convergence"
            await self.nemesis.heal_all()
            quiet = time.monotonic()
            await wait_for(self.checker.membership_converged, CONVERGE_WITHIN, "membership after quiet")
            await self._settle_membership()
            await wait_for(lambda: self.checker.converged(self.churn.truth), CONVERGE_WITHIN, "convergence after quiet")
            converged_after = round(time.monotonic() - quiet, 3)
            verdict = await self.checker.verdict(self.churn.truth, self.left)
        except STOPS as exc:
            stopped = why_stopped(exc, self.where)
        finally:
            for task in self.pending:
                task.cancel()
            await asyncio.gather(*self.pending, return_exceptions=True)
        if stopped is not None:
            verdict = await self.checker.evidence(self.churn.truth)
        verdict["latency_s"] = latency_summary([s for _, s in self.checker.latency_by_key])
        spent = spent_since({}, await stats_of_each(self.fleet))
        return {
            "mode": "lab",
            "valid": stopped is None and verdict["valid"],
            "stopped": stopped,
            "started_wall": time.time() - (time.monotonic() - self.started) if self.started else 0.0,
            "hosts": sorted(self.fleet.hosts),
            "networks": self.members,
            "endpoints": sum(len(self.churn.truth.keys(n)) for n in self.members),
            "phases": [{"name": "generated", "after_quiet_s": converged_after, "valid": stopped is None}],
            "verdict": verdict,
            "latencies": [s for _, s in self.checker.latency_by_key],
            "samples": [],
            "fault_windows": [],
            "harness_cost": harness_cost(spent),
            "truth": self.churn.truth.to_dict(),
            "clock_offsets_s": {h: {"offset": round(o, 6), "error": round(e, 6)} for h, (o, e) in self.clocks.items()},
            "schedule": self.schedule.to_dict(),
            "history": self.history.ops,
            "outcomes": self.history.counts(),
            "unfinished": self.history.pending(),  # invoked, never completed: their outcome is unknown
            "faults": self.nemesis.log,
        }


async def run_generated(seed: int, inventory: str, duration: float, results_dir: Any, log: Say) -> dict[str, Any]:
    hosts = load(inventory)
    if len(hosts) < 2:
        raise SpecError(f"a generated run needs at least 2 hosts; {inventory} has {len(hosts)}")
    schedule = lab_schedule(seed, len(hosts), duration)
    spec = Spec(f"generated-s{seed}", f"generated schedule of seed {seed} ({duration:g} s of steps)",
                seed, len(hosts), {}, ())  # fmt: skip
    log(f"{spec.name}: {len(hosts)} hosts from {inventory}; replay with --random --seed {seed}")
    return await run_published(hosts, lambda fleet: GeneratedRun(schedule, fleet, log), spec, seed, results_dir)
