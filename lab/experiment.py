"""Run an experiment spec (lab/spec.py) on a lab over SSH, or in the simulator, and write its report.

    python -m lab.experiment scenarios/experiments/headline.yaml                  # the local lab
    python -m lab.experiment SPEC --inventory inventories/prod                     # real hosts
    python -m lab.experiment SPEC --mode sim --hosts 2000                          # simulated

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
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from gossip_agent.sim import OptionError, SimOptions, Simulator
from gossip_agent.sim.options import CrashSpec, PartitionSpec, WorkloadSpec
from gossip_agent.sim.partitions import Partition

from . import report
from .ansible import ROOT
from .checker import Checker, WaitTimeout, latency_summary, percentile, since, wait_for
from .churn import Churn
from .fleet import Fleet, FleetError
from .inventory import InventoryError, load
from .nemesis import Nemesis
from .spec import Fault, Phase, Spec, SpecError
from .spec import load as load_spec

Say = Callable[[str], None]


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
        self.churn = Churn(fleet)
        self.created: dict[str, list[tuple[str, str, int]]] = {}  # network -> (writer, prefix, count) of phase 1
        self.samples: list[dict[str, Any]] = []
        self.latencies: list[float] = []  # per entry and member, each measured at its phase's end
        self.windows: list[dict[str, Any]] = []
        self.started = 0.0
        self.stats_before: dict[str, Any] = {}
        self.verdict: dict[str, Any] = {}  # of the last phase that converged
        self.planned: dict[str, int] = {}  # network -> entries it holds once this phase's churn is in
        self.writing: set[str] = set()  # hosts writing in the current phase

    async def prepare(self) -> None:
        """Networks of this spec only: leave them everywhere first (a previous run's), then attach."""
        attached = await self.fleet.each(lambda h: self.fleet.api(h, "GET", "/networks"))
        for host, nets in attached.items():
            for net in nets:
                if net["network"] in self.members:
                    await self.fleet.api(host, "DELETE", f"/networks/{net['network']}")
        for network, hosts in self.members.items():
            await self.fleet.each(lambda h, n=network: self.fleet.api(h, "POST", "/networks", {"network": n}), hosts)
        await wait_for(self.checker.membership_converged, 60, "every host to see every host alive")
        await wait_for(lambda: self.checker.converged({}), 60, "empty networks on every member")
        await self.checker.baseline()
        self.stats_before = await self.fleet.each(lambda h: self.fleet.api(h, "GET", "/stats"))
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
            batches = self.created.get(network, [])
            removed = 0
            for (writer, prefix, made), count in zip(batches, split(deletes, len(batches) or 1), strict=False):
                if count:
                    tasks.append(self.churn.delete(writer, network, min(count, made), prefix, churn.rate))
                    removed += min(count, made)
            self.planned[network] = len(self.churn.truth.get(network, ())) + creates - removed
        return tasks

    async def phase(self, index: int, phase: Phase) -> dict[str, Any]:
        record: dict[str, Any] = {"name": phase.name}
        fault = phase.fault
        # The cut is drawn once: writers are spread over its sides, then it is applied.
        cut = self.nemesis.shape(str(fault.value), fault.symmetric) if fault and fault.kind == "partition" else None
        groups = cut.groups if cut else None
        begun = time.monotonic()
        churn = asyncio.gather(*self._churn_tasks(index, phase, groups))
        heal, healed_at = None, None
        if fault is not None:
            await asyncio.sleep(fault.at)
            heal, detail = await self._inject(fault, cut)
            injected = time.monotonic()
            record["fault"] = {"kind": fault.kind, **detail}
            self.log(
                f"{phase.name}: {fault.kind} {fault.value} "
                + (f"{detail.get('groups', '')}" if groups else f"{detail.get('hosts', '')}")
            )
        await churn
        churn_done = time.monotonic()
        if phase.churn:
            record["churn_s"] = round(churn_done - begun, 3)
            self.log(f"{phase.name}: churn done in {churn_done - begun:.1f} s")
        if fault is not None:
            if heal is not None:
                await asyncio.sleep(max(0.0, fault.hold - (time.monotonic() - injected)))
                await heal()
                healed_at = time.monotonic()
                self.log(f"{phase.name}: healed after {healed_at - injected:.1f} s")
            self.windows.append({"label": f"{phase.name}: {fault.kind}", "start": injected - self.started,
                                 "end": (healed_at or time.monotonic()) - self.started})  # fmt: skip
        truth = self.churn.truth
        await wait_for(
            lambda: self.checker.converged(truth), phase.within, f"{phase.name}: every network to converge", 0.05
        )
        converged = time.monotonic()
        if phase.churn and healed_at is None:  # after a heal, the hold dominates the last write
            record["after_last_write_s"] = round(converged - self.churn.last_write, 3)
        if healed_at is not None:
            record["after_heal_s"] = round(converged - healed_at, 3)
        await wait_for(self.checker.membership_converged, phase.within, f"{phase.name}: membership to converge")
        # Each phase's delivery latency, judged at its end: a later heal re-delivers withdrawn
        # entries and would stamp them anew. Its keys carry the phase: p<N>-<writer>-<i>.
        self.verdict = await self.checker.verdict(self.churn.truth, self.churn.deleted)
        record["valid"] = self.verdict["valid"]
        mine = [s for key, s in self.checker.latency_by_key if key.startswith(f"p{index + 1}-")]
        self.latencies += mine
        if mine:
            record["latency_p50_s"] = percentile(mine, 50)
            record["latency_p99_s"] = percentile(mine, 99)
        figures = [f"{k[:-2].replace('_', ' ')} {v:.2f} s" for k, v in record.items() if k.startswith("after")]
        self.log(f"{phase.name}: converged, " + ", ".join(figures))
        return record

    async def run(self) -> dict[str, Any]:
        await self.prepare()
        self.started = time.monotonic()
        done = asyncio.Event()
        sampler = asyncio.create_task(self._sample(done))
        try:
            phases = [await self.phase(i, p) for i, p in enumerate(self.spec.phases)]
        finally:
            done.set()
            await sampler
        spent = _spent(self.stats_before, await self.fleet.each(lambda h: self.fleet.api(h, "GET", "/stats")))
        verdict = self.verdict  # the last phase's, taken when everything had converged
        verdict["latency_s"] = latency_summary(self.latencies)
        return {
            "mode": "lab",
            "valid": verdict["valid"] and all(p["valid"] for p in phases),
            "hosts": self.names,
            "networks": self.members,
            "endpoints": sum(map(len, self.churn.truth.values())),
            "phases": phases,
            "verdict": verdict,
            "latencies": self.latencies,
            "samples": self.samples,
            "fault_windows": self.windows,
            "copies_per_event": _copies(spent, self.churn, self.members),
            "cpu_seconds": {h: round(s["cpu_seconds"], 3) for h, s in spent.items()},
            "history": self.churn.history,
            "faults": self.nemesis.log,
        }


def _spent(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per host, counters and CPU-seconds of this run (the agents' own figures are cumulative)."""
    result = {}
    for host, now in after.items():
        was = before.get(host, {})
        figures = {"cpu_seconds": now["cpu_seconds"], **now["counters"]}
        result[host] = since({"cpu_seconds": was.get("cpu_seconds", 0.0), **was.get("counters", {})}, figures)
    return result


def _copies(spent: dict[str, Any], churn: Churn, members: dict[str, list[str]]) -> dict[str, float] | None:
    """Event copies received per (member, event) needed, by gossip and by sync: 1.0 in all would
    be perfect; gossip's redundancy and the syncs that repair partitions cost more."""
    events = {n: 0 for n in members}
    for op in churn.history:
        events[op["network"]] += op["count"]
    needed = sum(count * (len(members[n]) - 1) for n, count in events.items())
    if not needed:
        return None
    counted = {"gossip": "events_in", "sync": "sync_entries_in"}
    return {k: round(sum(s.get(c, 0) for s in spent.values()) / needed, 3) for k, c in counted.items()}


async def run_lab(spec: Spec, inventory: str, seed: int, log: Say = say) -> dict[str, Any]:
    hosts = load(inventory)
    log(f"{spec.name}: seed {seed}; {len(hosts)} hosts from {inventory}")
    async with Fleet(hosts) as fleet:
        run = LabRun(spec, fleet, seed, log)
        await run.nemesis.heal_all()
        try:
            return await run.run()
        finally:
            await run.nemesis.heal_all()  # also when a wait timed out or a host failed


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
                crashes.append(CrashSpec(min(1.0, count / hosts), at, at + SUPERVISOR_RESTART))
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
            "scope_leaks": {},
            "out_of_scope_received": result["leaks"],
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
    rows.append(
        (
            "missing / unexpected / resurrected",
            f"{_total(verdict['missing'])} / {_total(verdict['unexpected'])} / {_total(verdict['resurrected'])}",
        )
    )
    rows.append(("scope leaks", _total(verdict["scope_leaks"]) + _total(verdict["out_of_scope_received"])))
    for target, bound in spec.targets.items():
        rows.append((f"target {target} <= {bound:g}", _target(result, target, bound)))
    return rows


def _total(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_total(v) for v in value.values())
    if isinstance(value, list):
        return len(value)
    return int(value or 0)


def _target(result: dict[str, Any], target: str, bound: float) -> str:
    if target == "latency_p99_s":
        values = [result["verdict"]["latency_s"].get("p99")]
    elif result["mode"] == "sim":  # one figure: after the last write or fault, whichever came last
        values = [p.get("after_settle_s") for p in result["phases"]]
    else:
        values = [p[target] for p in result["phases"] if p.get(target) is not None]
    values = [v for v in values if v is not None]
    if not values:
        return "not measured in this mode"
    worst = max(values)
    return f"{'met' if worst <= bound else 'MISSED'} ({worst:.2f})"


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def publish(result: dict[str, Any], spec: Spec, seed: int, results_dir: Path) -> tuple[Path, list[tuple[str, Any]]]:
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{spec.name}-{result['mode']}-s{seed}"
    result.update({"run_id": run_id, "name": spec.name, "seed": seed, "commit": _commit(),
                   "spec": spec.description})  # fmt: skip
    latencies = result.pop("latencies")
    rows = summary(result, spec)
    return report.write(results_dir / run_id, result, latencies, rows), rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.experiment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("spec", help="an experiment spec, e.g. scenarios/experiments/headline.yaml")
    parser.add_argument("--mode", choices=("lab", "sim"), default="lab",
                        help="lab: the inventory's hosts over SSH (default); sim: the simulator")  # fmt: skip
    parser.add_argument("--inventory", default=str(ROOT / "inventories" / "local"), help="lab mode: the hosts")
    parser.add_argument("--hosts", type=int, help="sim mode: node count (default: the spec's)")
    parser.add_argument("--seed", type=int, help="default: the spec's")
    parser.add_argument("--results-dir", default=str(ROOT / "results"), help="reports go to DIR/<run-id>/")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        seed = spec.seed if args.seed is None else args.seed
        if args.mode == "sim":
            hosts = args.hosts or spec.hosts
            if hosts < 2:
                raise SpecError("--hosts must be at least 2")
            result = run_sim(spec, hosts, seed)
        else:
            result = asyncio.run(run_lab(spec, args.inventory, seed))
    except (SpecError, InventoryError) as exc:
        hint = " (bring the local lab up first: make demo does)" if isinstance(exc, InventoryError) else ""
        print(f"experiment: error: {exc}{hint}", file=sys.stderr)
        return 2
    except (FleetError, WaitTimeout) as exc:
        print(f"experiment: FAIL: {exc} (seed {seed})", file=sys.stderr)
        return 1
    page, rows = publish(result, spec, seed, Path(args.results_dir))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"  {k:<{width}}  {v}" for k, v in rows))
    print(f"{'PASS' if result['valid'] else 'FAIL'}: report {page} (replay: --seed {seed})")
    return 0 if result["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
