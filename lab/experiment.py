"""Run an experiment spec (lab/spec.py) on a lab over SSH, or in the simulator, and write its report.

    python -m lab.experiment scenarios/experiments/headline.yaml                  # the local lab
    python -m lab.experiment SPEC --inventory inventories/prod                     # real hosts
    python -m lab.experiment SPEC --mode sim --hosts 2000                          # simulated
    python -m lab.experiment --random --seed 7 [--duration 30]                     # generated (lab)

Prints progress, a summary table and the report's path; exit 0 when every check holds, 1 when
one fails, 2 on bad input (a bad spec, no lab).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from gossip_agent.sim import OptionError, SimOptions, Simulator
from gossip_agent.sim.options import CrashSpec, PartitionSpec, WorkloadSpec
from gossip_agent.sim.partitions import Partition

from . import report
from .checker import EVIDENCE_TIMEOUT, EXAMPLES, Checker, WaitTimeout, latency_summary, percentile, since, wait_for
from .churn import Churn
from .fleet import CTL, Fleet, FleetError
from .history import History, Truth
from .inventory import Host, InventoryError, load
from .nemesis import Nemesis, NemesisError
from .playbook import ROOT
from .routes import PINGS, Routes
from .spec import Fault, Phase, Spec, SpecError
from .spec import load as load_spec

Say = Callable[[str], None]
LOG_LINES = 300
AGENT_LOG = (
    "if [ -d /run/systemd/system ]; then journalctl -u gossip-agent -n {lines} --no-pager; "
    "else tail -n {lines} /var/log/gossip-agent/agent.log; fi 2>&1"
)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# === lab ========================================================================================


class LabRun:
    """One spec on one fleet: phases in order, each waited to convergence before the next."""

    def __init__(self, spec: Spec, fleet: Fleet, seed: int, log: Say) -> None:
        self.spec, self.fleet, self.log = spec, fleet, log
        self.rng = random.Random(seed)
        self.names = sorted(fleet.hosts)
        self.members = spec.members(self.names)
        self.nemesis = Nemesis(fleet, self.rng.getrandbits(32))
        self.checker = Checker(fleet, self.members)
        # With containers, networks get the data plane, and phases are judged by routes too.
        overlay = spec.overlay() if spec.containers else {}
        self.routes = Routes(fleet, self.members, {n: v for n, (v, _) in overlay.items()}) if overlay else None
        self.attach: dict[str, dict[str, Any]] = {n: {"network": n} for n in self.members}  # POST /networks bodies
        for network, (vxlan_id, subnet) in overlay.items():
            self.attach[network].update(vxlan_id=vxlan_id, subnet=subnet)
        self.history = History()  # churn batches and faults, one history as Jepsen keeps it
        self.churn = Churn(fleet, self.history, strict=False)
        self.created: dict[str, list[tuple[str, str, int]]] = {}  # network -> (writer, prefix, count) of phase 1
        self.samples: list[dict[str, Any]] = []
        self.latencies: list[float] = []  # per entry and member, each measured at its phase's end
        self.windows: list[dict[str, Any]] = []
        self.marks: list[dict[str, Any]] = []  # moments the plots show: routes right, containers reachable
        self.started = 0.0
        self.stats_before: dict[str, Any] = {}
        self.verdict: dict[str, Any] = {}  # of the last phase that converged
        self.planned: dict[str, int] = {}  # network -> entries it holds once this phase's churn is in
        self.writing: set[str] = set()  # hosts writing in the current phase
        self.phases: list[dict[str, Any]] = []  # records of the phases that converged
        self.step = "preparing the networks"  # what the run is doing: a stopped run says where
        self.clocks: dict[str, tuple[float, float]] = {}  # host -> (clock offset, its error), seconds
        self.started_wall = 0.0

    async def prepare(self) -> None:
        """Networks of this spec only: leave them everywhere first (a previous run's), then attach."""
        attached = await self.fleet.each(lambda h: self.fleet.api(h, "GET", "/networks"))
        for host, nets in attached.items():
            for net in nets:
                if net["network"] in self.members:
                    if net.get("vxlan_id") is not None:  # a previous run's containers go first
                        await self.fleet.run(host, f"{CTL} container delete {net['network']} --all", check=False)
                    await self.fleet.api(host, "DELETE", f"/networks/{net['network']}")
        for network, hosts in self.members.items():
            body = self.attach[network]
            await self.fleet.each(lambda h, b=body: self.fleet.api(h, "POST", "/networks", b), hosts)
        await wait_for(self.checker.membership_converged, 60, "every host to see every host alive")
        if self.routes is not None:
            await wait_for(self.routes.ready, 60, "the data plane on for every member")
        await wait_for(lambda: self.checker.converged(Truth()), 60, "empty networks on every member")
        await self.checker.baseline()
        self.stats_before = await self.fleet.each(lambda h: self.fleet.api(h, "GET", "/stats"))
        self.clocks = await self.checker.measure_clocks()
        for network, hosts in self.members.items():
            self.log(f"network {network}: {len(hosts)} hosts ({hosts[0]}..{hosts[-1]})")

    async def _sample(self, done: asyncio.Event) -> None:
        """Convergence over time for the plot; a host that does not answer skips a sample."""
        while not done.is_set():
            planned = {n: self.planned.get(n, 0) for n in self.members}
            try:
                fractions = await self.checker.fractions(planned)
                self.samples.append({"t": round(time.monotonic() - self.started, 3), "converged": fractions})
            except FleetError:
                pass
            await asyncio.sleep(0.2)

    def _victims(self, fault: Fault) -> list[str]:
        """Hosts chosen by the seed, not this phase's writers where enough others exist: a writer
        killed mid-batch leaves its batch's outcome unknown, and the run could not be judged."""
        readers = [h for h in self.names if h not in self.writing]
        count = len(self.names) if fault.value == "all" else min(int(fault.value), len(self.names))
        return sorted(self.rng.sample(readers if len(readers) >= count else self.names, count))

    async def _inject(self, fault: Fault, cut: Partition | None) -> tuple[Callable[[], Any] | None, dict[str, Any]]:
        """Apply a fault; returns its heal (None when it is over once done) and its record."""
        n = self.nemesis
        if cut is not None:
            await n.partition(cut)
            return n.heal_all, {"shape": cut.shape, "groups": cut.groups, "symmetric": fault.symmetric}
        if fault.kind == "loss":
            await n.loss(int(fault.value))
            return n.heal_all, {"percent": fault.value}
        if fault.kind == "delay":
            await n.delay(int(fault.value))
            return n.heal_all, {"ms": fault.value}
        victims = self._victims(fault)
        if fault.kind == "pause":
            await asyncio.gather(*(n.pause(v) for v in victims))
            return n.heal_all, {"hosts": victims}
        if fault.kind == "kill":
            await asyncio.gather(*(n.kill(v) for v in victims))
        elif fault.kind == "restart":
            await asyncio.gather(*(n.restart(v) for v in victims))
        else:
            await n.rolling_restart(victims)
        return None, {"hosts": victims}

    def _writers(self, network: str, count: int, groups: list[list[str]] | None) -> list[str]:
        """`count` writers chosen by the seed, one from each side of a partition in turn."""
        hosts = self.members[network]
        sides = [[h for h in g if h in hosts] for g in groups or [hosts]]
        pools = [self.rng.sample(side, len(side)) for side in sides if side]
        chosen: list[str] = []
        while len(chosen) < min(count, len(hosts)):
            for pool in pools:
                if pool and len(chosen) < count:
                    chosen.append(pool.pop())
        return chosen

    def _churn_tasks(self, index: int, phase: Phase, groups: list[list[str]] | None) -> list[Any]:
        churn = phase.churn
        self.writing = set()
        if churn is None:
            return []
        networks = list(churn.networks or self.members)
        tasks = []
        for network, creates, deletes in zip(networks, split(churn.create, len(networks)),
                                             split(churn.delete, len(networks)), strict=True):  # fmt: skip
            writers = self._writers(network, churn.writers, groups)
            self.writing.update(writers)
            for writer, count in zip(writers, split(creates, len(writers)), strict=True):
                if count:
                    prefix = f"p{index + 1}-{writer}-"
                    tasks.append(self.churn.create(writer, network, count, prefix, churn.rate))
                    if index == 0:
                        self.created.setdefault(network, []).append((writer, prefix, count))
                if churn.containers:
                    tasks.append(self.churn.create_containers(writer, network, churn.containers))
            creates += churn.containers * len(writers)
            batches = self.created.get(network, [])
            removed = 0
            for (writer, prefix, made), count in zip(batches, split(deletes, len(batches) or 1), strict=False):
                if count:
                    tasks.append(self.churn.delete(writer, network, min(count, made), prefix, churn.rate))
                    removed += min(count, made)
            self.planned[network] = len(self.churn.truth.keys(network)) + creates - removed
        return tasks

    async def phase(self, index: int, phase: Phase) -> dict[str, Any]:
        self.step = f"phase {phase.name}: churn and fault"
        record: dict[str, Any] = {"name": phase.name}
        fault = phase.fault
        # The cut is drawn once: writers are spread over its sides, then it is applied.
        cut = self.nemesis.shape(str(fault.value), fault.symmetric) if fault and fault.kind == "partition" else None
        groups = cut.groups if cut else None
        begun = time.monotonic()
        churn = asyncio.gather(*self._churn_tasks(index, phase, groups))
        heal, healed_at, injected = None, None, 0.0
        try:
            if fault is not None:
                await asyncio.sleep(fault.at)
                invoked = self.history.invoke(fault.kind, "nemesis", value=str(fault.value))
                try:
                    heal, detail = await self._inject(fault, cut)
                except FleetError as exc:  # some hosts may have it: the run cannot be judged further
                    self.history.complete(invoked, "info", error=str(exc))
                    raise
                self.history.complete(invoked, "ok", **detail)
                injected = time.monotonic()
                record["fault"] = {"kind": fault.kind, **detail}
                self.log(
                    f"{phase.name}: {fault.kind} {fault.value} "
                    + (f"{detail.get('groups', '')}" if groups else f"{detail.get('hosts', '')}")
                )
            await churn
        finally:
            if not churn.done():  # stopped early: each batch records its outcome (info) first
                churn.cancel()
                await asyncio.gather(churn, return_exceptions=True)
        churn_done = time.monotonic()
        if phase.churn:
            record["churn_s"] = round(churn_done - begun, 3)
            self.log(f"{phase.name}: churn done in {churn_done - begun:.1f} s")
        if fault is not None:
            if heal is not None:
                await asyncio.sleep(max(0.0, fault.hold - (time.monotonic() - injected)))
                invoked = self.history.invoke("heal", "nemesis")
                await heal()
                self.history.complete(invoked, "ok")
                healed_at = time.monotonic()
                self.log(f"{phase.name}: healed after {healed_at - injected:.1f} s")
            self.windows.append({"label": f"{phase.name}: {fault.kind}", "start": injected - self.started,
                                 "end": (healed_at or time.monotonic()) - self.started})  # fmt: skip
        truth = self.churn.truth
        self.step = f"phase {phase.name}: waiting {phase.within:g} s for convergence"
        await wait_for(
            lambda: self.checker.converged(truth), phase.within, f"{phase.name}: every network to converge", 0.05
        )
        converged = time.monotonic()
        if phase.churn and healed_at is None:  # after a heal, the hold dominates the last write
            record["after_last_write_s"] = round(converged - self.churn.last_write, 3)
        if healed_at is not None:
            record["after_heal_s"] = round(converged - healed_at, 3)
        self.step = f"phase {phase.name}: waiting {phase.within:g} s for membership"
        await wait_for(self.checker.membership_converged, phase.within, f"{phase.name}: membership to converge")
        if self.routes is not None:
            since, label = (healed_at, "after_heal") if healed_at else (self.churn.last_write, "after_last_write")
            await self._routes(self.routes, phase, record, since, label)
        # Each phase's delivery latency, judged at its end: a later heal re-delivers withdrawn
        # entries and would stamp them anew. Its keys carry the phase: p<N>-<writer>-<i>.
        self.verdict = await self.checker.verdict(self.churn.truth)
        if self.routes is not None:
            self.verdict["routes"] = await self.routes.settled_verdict(self.churn.truth, phase.within)
            self.verdict["wrong_pings"] = record.pop("wrong_pings")
            self.verdict["valid"] &= self.verdict["routes"]["valid"] and not self.verdict["wrong_pings"]
        record["valid"] = self.verdict["valid"]
        mine = [s for key, s in self.checker.latency_by_key if key.startswith(f"p{index + 1}-")]
        self.latencies += mine
        if mine:
            record["latency_p50_s"] = percentile(mine, 50)
            record["latency_p99_s"] = percentile(mine, 99)
        figures = [f"{k[:-2].replace('_', ' ')} {v:.2f} s" for k, v in record.items() if k.startswith("after")]
        self.log(f"{phase.name}: converged, " + ", ".join(figures))
        return record

    async def _routes(self, routes: Routes, phase: Phase, record: dict[str, Any], since: float, label: str) -> None:
        """Wait for every host's routes to match the tables, then for sampled pings to answer
        within each network and never across; record when each happened, and the pings that
        were still wrong at the deadline."""
        self.step = f"phase {phase.name}: waiting {phase.within:g} s for every host's routes"
        await wait_for(lambda: routes.converged(self.churn.truth), phase.within, f"{phase.name}: routes to converge")
        record[f"routes_{label}_s"] = round(time.monotonic() - since, 3)
        self.marks.append({"label": f"{phase.name}: routes right", "t": time.monotonic() - self.started})
        self.step = f"phase {phase.name}: pinging between containers"
        deadline = time.monotonic() + phase.within
        wrong = await routes.wrong_pings(self.churn.truth, self.rng, PINGS)
        while wrong and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            wrong = await routes.wrong_pings(self.churn.truth, self.rng, PINGS)
        if not wrong:
            record[f"reachable_{label}_s"] = round(time.monotonic() - since, 3)
            self.marks.append({"label": f"{phase.name}: reachable", "t": time.monotonic() - self.started})
        record["wrong_pings"] = wrong[:EXAMPLES]

    async def run(self) -> dict[str, Any]:
        """Every phase in order; a run that times out, loses a host or is interrupted stops where
        it is and still returns its result, with the evidence of where and why (`stopped`)."""
        done = asyncio.Event()
        sampler: asyncio.Task[None] | None = None
        stopped: dict[str, Any] | None = None
        try:
            await self.prepare()
            self.started, self.started_wall = time.monotonic(), time.time()
            sampler = asyncio.create_task(self._sample(done))
            for i, p in enumerate(self.spec.phases):
                self.phases.append(await self.phase(i, p))
                if not self.phases[-1]["valid"]:  # later phases would be judged on a broken table
                    stopped = {"step": f"phase {p.name}: its verdict", "why": "safety checks failed", "judged": True}
                    break
        except STOPS as exc:
            stopped = why_stopped(exc, self.step)
        finally:
            done.set()
            if sampler is not None:
                await sampler
        self.log(f"stopped while {stopped['step']}: {stopped['why']}" if stopped else "all phases done")
        return await self.result(stopped)

    async def result(self, stopped: dict[str, Any] | None) -> dict[str, Any]:
        """What the run found. When it stopped early, the verdict is the evidence at that moment:
        per network and host what was missing, extra or wrong, from every host that answered."""
        spent = spent_since(self.stats_before, await stats_of_each(self.fleet))
        if stopped is not None and not stopped.get("judged"):
            self.verdict = await self.checker.evidence(self.churn.truth)
            if self.routes is not None:  # which routes were missing or stale where it stopped
                try:
                    self.verdict["routes"] = await self.routes.verdict(self.churn.truth)
                except FleetError as exc:
                    self.verdict["routes"] = {"error": str(exc)}
        verdict = self.verdict  # the last phase's, taken when everything had converged
        verdict["latency_s"] = latency_summary(self.latencies)
        return {
            "mode": "lab",
            "valid": stopped is None and verdict["valid"] and all(p["valid"] for p in self.phases),
            "stopped": stopped,
            "started_wall": self.started_wall,
            "hosts": self.names,
            "networks": self.members,
            "endpoints": sum(len(self.churn.truth.keys(n)) for n in self.members),
            "phases": self.phases,
            "verdict": verdict,
            "latencies": self.latencies,
            "samples": self.samples,
            "fault_windows": self.windows,
            "marks": self.marks,
            "copies_per_event": _copies(spent, self.churn, self.members),
            "cpu_seconds": {h: round(s["cpu_seconds"], 3) for h, s in spent.items()},
            "harness_cost": harness_cost(spent),
            "truth": self.churn.truth.to_dict(),
            "clock_offsets_s": {h: {"offset": round(o, 6), "error": round(e, 6)} for h, (o, e) in self.clocks.items()},
            "history": self.history.ops,
            "outcomes": self.history.counts(),
            "unfinished": self.history.pending(),  # invoked, never completed: their outcome is unknown
            "faults": self.nemesis.log,
        }


# What stops a run early; it still reports (`why_stopped`). Ctrl-C reaches a run as a cancel.
STOPS = (Exception, asyncio.CancelledError, KeyboardInterrupt)


def why_stopped(exc: BaseException, step: str) -> dict[str, Any]:
    """Where a run stopped and why: a wait that timed out, a host lost, an interruption, or a
    bug of the harness (with its traceback)."""
    if isinstance(exc, WaitTimeout | FleetError):
        return {"step": step, "why": str(exc)}
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
        return {"step": step, "why": "interrupted"}
    return {"step": step, "why": f"harness error {type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


async def stats_of_each(fleet: Fleet) -> dict[str, Any]:
    """Every host's /stats that answered: one stopped agent must not take the others' figures."""

    async def of(host: str) -> Any:
        try:
            return await fleet.api(host, "GET", "/stats", within=EVIDENCE_TIMEOUT)
        except FleetError:
            return None

    return {h: s for h, s in (await fleet.each(of)).items() if s is not None}


def spent_since(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per host, counters and CPU-seconds of this run (the agents' own figures are cumulative)."""
    result = {}
    for host, now in after.items():
        was = before.get(host, {})
        figures = {"cpu_seconds": now["cpu_seconds"], **_api(now), **now["counters"]}
        baseline = {"cpu_seconds": was.get("cpu_seconds", 0.0), **_api(was), **was.get("counters", {})}
        result[host] = since(baseline, figures)
    return result


def _api(stats: dict[str, Any]) -> dict[str, float]:
    """What answering the harness cost an agent (an agent older than this figure reports 0)."""
    api = stats.get("api", {})
    return {"api_requests": api.get("requests", 0), "api_cpu_seconds": api.get("cpu_seconds", 0.0)}


def harness_cost(spent: dict[str, dict[str, float]]) -> dict[str, float]:
    """The measurement's own load on the agents: API requests and the CPU-seconds they took,
    in all and as a share of the agents' CPU over the run."""
    requests = sum(s.get("api_requests", 0) for s in spent.values())
    api_cpu = sum(s.get("api_cpu_seconds", 0.0) for s in spent.values())
    cpu = sum(s.get("cpu_seconds", 0.0) for s in spent.values())
    return {"api_requests": requests, "api_cpu_seconds": round(api_cpu, 3),
            "share_of_agent_cpu": round(api_cpu / cpu, 4) if cpu else 0.0}  # fmt: skip


def _copies(spent: dict[str, Any], churn: Churn, members: dict[str, list[str]]) -> dict[str, float] | None:
    """Event copies received per (member, event) needed, by gossip and by sync: 1.0 in all would
    be perfect; gossip's redundancy and the syncs that repair partitions cost more."""
    events = {n: 0 for n in members}
    for op in churn.history.ops:
        if op["type"] == "invoke" and op.get("network") in events:
            events[op["network"]] += op["count"]
    needed = sum(count * (len(members[n]) - 1) for n, count in events.items())
    if not needed:
        return None
    counted = {"gossip": "events_in", "sync": "sync_entries_in"}
    return {k: round(sum(s.get(c, 0) for s in spent.values()) / needed, 3) for k, c in counted.items()}


async def run_lab(spec: Spec, inventory: str, seed: int, results_dir: Path, log: Say = say) -> dict[str, Any]:
    """Run `spec` on the inventory's hosts and publish its report under `results_dir`, also when
    it stops early (a timeout, a host lost, Ctrl-C): then with the agents' logs beside it."""
    hosts = load(inventory)
    log(f"{spec.name}: seed {seed}; {len(hosts)} hosts from {inventory}")
    return await run_published(hosts, lambda fleet: LabRun(spec, fleet, seed, log), spec, seed, results_dir)


async def run_published(
    hosts: list[Host], make: Callable[[Fleet], Any], spec: Spec, seed: int, results_dir: Path
) -> dict[str, Any]:
    """Run (a LabRun or a GeneratedRun) on the hosts between two heals, and publish its report
    whatever happened, with the agents' logs when it failed."""
    async with Fleet(hosts) as fleet:
        run = make(fleet)
        await run.nemesis.heal_all()
        try:
            result: dict[str, Any] = await run.run()  # it stops where it is on a timeout, a lost host or Ctrl-C
        except BaseException:  # a bug of the harness: heal all the same
            await run.nemesis.heal_all()
            raise
        try:
            await run.nemesis.heal_all()
        except NemesisError as exc:  # the lab may still be faulty: the run cannot pass
            result["valid"] = False
            result["stopped"] = result["stopped"] or {"step": "healing every fault", "why": str(exc)}
        logs = await collect_logs(fleet) if not result["valid"] else {}
    page, rows = publish(result, spec, seed, results_dir, logs)
    result["report"], result["summary"] = str(page), rows
    return result


async def collect_logs(fleet: Fleet, lines: int = LOG_LINES) -> dict[str, str]:
    """The last lines of every agent's log (file or journal), for a run that failed."""

    async def tail(host: str) -> str:
        try:
            return (await fleet.run(host, AGENT_LOG.format(lines=lines), check=False)).stdout
        except FleetError as exc:
            return f"(no log: {exc})"

    return await fleet.each(tail)


# === sim ========================================================================================

SIM_FAULTS = ("partition", "kill", "restart")
SUPERVISOR_RESTART = 1.0  # seconds a supervisor takes to restart a killed agent


def sim_options(spec: Spec, hosts: int, seed: int) -> SimOptions:
    """The spec as one simulated timeline. Phases do not wait for convergence: each starts when
    the previous one's churn and fault are over, plus a settling gap."""
    names = SimOptions(nodes=hosts).node_names()
    members = spec.members(names)
    workloads: list[WorkloadSpec] = []
    partitions: list[PartitionSpec] = []
    crashes: list[CrashSpec] = []
    start = 1.0
    first: dict[str, int] = {}  # network -> index in workloads of its first-phase creates
    for index, phase in enumerate(spec.phases):
        length = 0.0
        fault = phase.fault
        if fault is not None and fault.kind not in SIM_FAULTS:
            raise SpecError(
                f"phase {phase.name}: fault {fault.kind} runs only in the lab; "
                f"the simulator has {', '.join(SIM_FAULTS)}"
            )
        churn = phase.churn
        if churn is not None:
            networks = list(churn.networks or members)
            for network, creates, deletes in zip(networks, split(churn.create, len(networks)),
                                                 split(churn.delete, len(networks)), strict=True):  # fmt: skip
                writers = min(churn.writers, len(members[network]))
                if creates:
                    workloads.append(WorkloadSpec(network, creates, start, churn.rate * writers, writers,
                                                  prefix=f"p{index + 1}-"))  # fmt: skip
                    if index == 0:
                        first[network] = len(workloads) - 1
                if deletes:
                    if network not in first:
                        raise SpecError(
                            f"phase {phase.name}: deletes in {network} need creates there in the first phase"
                        )
                    # The first phase's workload deletes its own keys, from this phase's start on.
                    made = workloads[first[network]]
                    workloads[first[network]] = replace(made, delete_fraction=min(1.0, deletes / made.creates),
                                                        delete_after=start - made.start)  # fmt: skip
                length = max(length, creates / (churn.rate * writers) if churn.rate else 0.0)
        if fault is not None:
            at = start + fault.at
            if fault.kind == "partition":
                end = at + max(fault.hold, length - fault.at, 0.1)
                partitions.append(PartitionSpec(str(fault.value), at, end, fault.symmetric))
                length = max(length, end - start)
            else:
                count = hosts if fault.value == "all" else int(fault.value)
                # kill is a crash (kill -9), restart a graceful one (SIGTERM), in both worlds.
                graceful = fault.kind == "restart"
                crashes.append(CrashSpec(min(1.0, count / hosts), at, at + SUPERVISOR_RESTART, graceful))
                length = max(length, fault.at + SUPERVISOR_RESTART)
        start += length + 5.0
    try:
        return SimOptions(seed=seed, nodes=hosts, networks={n: tuple(m) for n, m in members.items()},
                          profile=spec.profile, membership=spec.membership, workloads=tuple(workloads),
                          partitions=tuple(partitions), crashes=tuple(crashes),
                          liveness_bound=max(p.within for p in spec.phases))  # fmt: skip
    except OptionError as exc:
        raise SpecError(f"{spec.name}: cannot simulate: {exc}") from None


def run_sim(spec: Spec, hosts: int, seed: int, log: Say = say) -> dict[str, Any]:
    options = sim_options(spec, hosts, seed)
    log(f"{spec.name}: simulating {hosts} nodes, seed {seed}")
    if spec.containers:
        log(f"{spec.name}: containers are left out: the simulator has tables, not kernels")
    sim = Simulator(options)
    result = sim.run(progress=log)
    traffic = result["traffic"]
    after = [n["convergence_after_settle"] for n in result["networks"].values()]
    return {
        "mode": "sim",
        "valid": result["valid"],
        "hosts": options.node_names(),
        "networks": {n: list(m) for n, m in options.network_members().items()},
        "endpoints": sum(n["expected_entries"] for n in result["networks"].values()),
        "phases": [{"name": "all (virtual time)", "after_settle_s": max(after) if None not in after else None}],
        "verdict": {
            "valid": result["valid"],
            "missing": {n: r["missing_count"] for n, r in result["networks"].items() if r["missing_count"]},
            "unexpected": {n: r["unexpected_count"] for n, r in result["networks"].items() if r["unexpected_count"]},
            "resurrected": result["resurrections"],
            "scope_leaks": result["scope_leaks"],
            "out_of_scope_received": result["out_of_scope_received"],
            "latency_s": result["latency"],
            "bytes_out": {"mean per node": traffic["bytes_out_per_node"]},
        },
        "latencies": sim.observer.latencies,
        "samples": [],
        "fault_windows": [
            {"label": f["fault"], "start": f.get("start", f.get("at")), "end": f.get("end", f.get("restart_at"))}
            for f in result["faults"]
        ],  # fmt: skip
        "copies_per_event": {
            "gossip": round(traffic["copies_per_event_per_node"] - traffic["sync_copies_per_event_per_node"], 3),
            "sync": round(traffic["sync_copies_per_event_per_node"], 3),
        },
        "simulation": {k: result[k] for k in ("trace_hash", "wall_seconds", "virtual_time", "settle_at", "options")},
    }


# === report =====================================================================================


def summary(result: dict[str, Any], spec: Spec) -> list[tuple[str, Any]]:
    verdict = result["verdict"]
    lat = verdict["latency_s"]
    rows: list[tuple[str, Any]] = [
        ("mode", result["mode"]),
        ("hosts", len(result["hosts"])),
        ("endpoints at the end", f"{result['endpoints']:,} in {len(result['networks'])} networks"),
    ]
    for phase in result["phases"]:
        figures = [
            f"{k[:-2].replace('_', ' ')} {v:.2f} s" for k, v in phase.items() if k.endswith("_s") and v is not None
        ]
        rows.append((f"phase {phase['name']}", "; ".join(figures) or "-"))
    rows.append(
        ("entry latency p50 / p99", f"{lat['p50']:.2f} s / {lat['p99']:.2f} s" if lat.get("p50") is not None else "-")
    )
    copies = result.get("copies_per_event")
    if copies:
        rows.append(("copies received per event (gossip + sync)", f"{copies['gossip']:.2f} + {copies['sync']:.2f}"))
    cpu = [v for v in result.get("cpu_seconds", {}).values() if v is not None]
    if cpu:
        rows.append(("agent CPU-seconds (sum / max host)", f"{sum(cpu):.1f} / {max(cpu):.1f}"))
    cost = result.get("harness_cost")
    if cost:
        share = 100 * cost["share_of_agent_cpu"]
        rows.append(("harness cost on the agents (API requests, CPU-s, share of agent CPU)",
                     f"{cost['api_requests']:,}, {cost['api_cpu_seconds']:.1f}, {share:.1f} %"))  # fmt: skip
    counts = " / ".join(str(_total(verdict.get(k, {}))) for k in ("missing", "unexpected", "wrong", "resurrected"))
    rows.append(("missing / unexpected / wrong value or owner / resurrected", counts))
    rows.append(("scope leaks (held outside the network)", _total(verdict["scope_leaks"])))
    rows.append(("out-of-scope receipts (dropped at the scope guard)", _total(verdict["out_of_scope_received"])))
    for t in result["targets"]:
        figure = "not measured" if t["worst"] is None else f"{t['worst']:.2f}"
        shown = f"{'met' if t['met'] else 'MISSED'} ({figure})" if t["met"] is not None else "not measured"
        rows.append((f"target {t['target']} <= {t['bound']:g}", shown))
    return rows


def judge_targets(result: dict[str, Any], spec: Spec) -> list[dict[str, Any]]:
    """Each target of the spec against the worst figure of the run; `met` is None when this
    mode does not measure it."""
    judged = []
    for target, bound in spec.targets.items():
        worst = _worst(result, target)
        # Unmeasured in the lab means the run never got there (or the spec asks for a figure its
        # phases cannot give): not met. The simulator lacks some figures: not judged there.
        met = (worst <= bound) if worst is not None else (False if result["mode"] == "lab" else None)
        judged.append({"target": target, "bound": bound, "worst": worst, "met": met})
    return judged


def verdict_line(result: dict[str, Any]) -> str:
    """PASS, or FAIL and why: stopped early, safety (lost, leaked, resurrected, wrong), targets."""
    if result.get("stopped"):
        return f"FAIL: stopped while {result['stopped']['step']}: {result['stopped']['why']}"
    if not result["valid"]:
        return "FAIL: safety: " + ", ".join(
            k for k in ("missing", "unexpected", "wrong", "resurrected", "scope_leaks", "out_of_scope_received")
            if result["verdict"].get(k)
        )  # fmt: skip
    missed = [t["target"] for t in result["targets"] if t["met"] is False]
    return f"FAIL: targets missed: {', '.join(missed)}" if missed else "PASS"


def _total(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_total(v) for v in value.values())
    if isinstance(value, list):
        return len(value)
    return int(value or 0)


def _worst(result: dict[str, Any], target: str) -> float | None:
    if target == "latency_p99_s":
        values = [result["verdict"]["latency_s"].get("p99")]
    elif result["mode"] == "sim":  # one figure: after the last write or fault, whichever came last
        values = [p.get("after_settle_s") for p in result["phases"]]
    else:
        values = [p[target] for p in result["phases"] if p.get(target) is not None]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def publish(
    result: dict[str, Any], spec: Spec, seed: int, results_dir: Path, logs: dict[str, str] | None = None
) -> tuple[Path, list[tuple[str, Any]]]:
    """Judge the targets, take the verdict and write results/<run-id>/ (with the hosts' logs)."""
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{spec.name}-{result['mode']}-s{seed}"
    result.update({"run_id": run_id, "name": spec.name, "seed": seed, "commit": _commit(),
                   "spec": spec.description})  # fmt: skip
    result["targets"] = judge_targets(result, spec)
    result["targets_met"] = all(t["met"] is not False for t in result["targets"])
    result["verdict_line"] = verdict_line(result)
    result["passed"] = result["verdict_line"] == "PASS"
    latencies = result.pop("latencies")
    rows = summary(result, spec)
    return report.write(results_dir / run_id, result, latencies, rows, logs or {}), rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.experiment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("spec", nargs="?", help="an experiment spec, e.g. scenarios/experiments/headline.yaml")
    parser.add_argument(
        "--random",
        action="store_true",
        help="no spec: run the schedule the simulator's generator draws from --seed on the lab",
    )
    parser.add_argument("--duration", type=float, default=30.0,
                        help="--random: seconds of operations and faults (30)")  # fmt: skip
    parser.add_argument("--mode", choices=("lab", "sim"), default="lab",
                        help="lab: the inventory's hosts over SSH (default); sim: the simulator")  # fmt: skip
    parser.add_argument("--inventory", default=str(ROOT / "inventories" / "local"), help="lab mode: the hosts")
    parser.add_argument("--hosts", type=int, help="sim mode: node count (default: the spec's)")
    parser.add_argument("--seed", type=int, help="default: the spec's")
    parser.add_argument("--results-dir", default=str(ROOT / "results"), help="reports go to DIR/<run-id>/")
    args = parser.parse_args(argv)
    if args.random == (args.spec is not None):
        parser.error("give a spec, or --random (with --seed), not both")
    if args.random and (args.mode != "lab" or not 1 <= args.duration <= 3600):
        parser.error("--random runs on the lab, for 1-3600 s (`gossip-agent sim --random` simulates)")
    seed = args.seed if args.seed is not None else 1
    try:
        if args.random:
            from .generated import run_generated  # it imports this module

            result = asyncio.run(run_generated(seed, args.inventory, args.duration, Path(args.results_dir), say))
        else:
            spec = load_spec(args.spec)
            seed = spec.seed if args.seed is None else args.seed
            if args.mode == "sim":
                hosts = args.hosts or spec.hosts
                if hosts < 2:
                    raise SpecError("--hosts must be at least 2")
                result = run_sim(spec, hosts, seed)
                page, rows = publish(result, spec, seed, Path(args.results_dir))
                result["report"], result["summary"] = str(page), rows
            else:
                result = asyncio.run(run_lab(spec, args.inventory, seed, Path(args.results_dir)))
    except (SpecError, InventoryError) as exc:
        hint = " (bring the local lab up first: make demo does)" if isinstance(exc, InventoryError) else ""
        print(f"experiment: error: {exc}{hint}", file=sys.stderr)
        return 2
    except FleetError as exc:  # the hosts could not even be reached: nothing ran
        print(f"experiment: FAIL: {exc} (seed {seed})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the run stopped, collected its evidence and wrote its report
        print(f"experiment: interrupted; its report is under {args.results_dir}/ (seed {seed})", file=sys.stderr)
        return 130
    rows = result["summary"]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"  {k:<{width}}  {v}" for k, v in rows))
    print(f"{result['verdict_line']}: report {result['report']} (replay: --seed {seed})")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
