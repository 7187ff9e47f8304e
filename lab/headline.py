"""The headline experiment on a lab: 10,000 endpoints across 3 overlapping networks, written on both
sides of a halves partition, then heal; check that every network converges within its scope.

    python -m lab.headline --inventory inventories/local [--endpoints 10000] [--seed 7]

Prints a summary table and the path of results/<run-id>/results.json; exit 0 when every check
holds, 1 when one fails, 2 on bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import report
from .checker import Checker, WaitTimeout, wait_for
from .churn import Churn
from .fleet import Fleet, FleetError
from .inventory import InventoryError, load
from .nemesis import Nemesis

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "hl-"  # networks of this experiment; a re-run first detaches the previous run's


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def plan_networks(names: list[str]) -> dict[str, list[str]]:
    """red: first 60 %, green: last 60 %, blue: every other host. Each crosses the halves split."""
    n = len(names)
    cut = max(1, round(n * 0.6))
    return {f"{PREFIX}red": names[:cut], f"{PREFIX}green": names[n - cut :], f"{PREFIX}blue": names[::2]}


async def experiment(inventory: str, endpoints: int, seed: int, partition_seconds: float) -> dict[str, Any]:
    rng = random.Random(seed)
    hosts = load(inventory)
    names = sorted(h.name for h in hosts)
    say(f"seed {seed}; {len(names)} hosts from {inventory}")
    async with Fleet(hosts) as fleet:
        nemesis = Nemesis(fleet)
        await nemesis.heal_all()
        try:
            return await _run(fleet, nemesis, rng, names, endpoints, partition_seconds)
        finally:
            await nemesis.heal_all()


async def _run(
    fleet: Fleet, nemesis: Nemesis, rng: random.Random, names: list[str], endpoints: int, hold: float
) -> dict[str, Any]:
    networks = plan_networks(names)
    # A clean start: leave the networks of a previous run, then join this run's.
    attached = await fleet.each(lambda name: fleet.ctl(name, "networks"))
    for host, nets in attached.items():
        for net in nets:
            if net["network"].startswith(PREFIX):
                await fleet.ctl(host, "detach", net["network"])
    for network, members in networks.items():
        await fleet.each(lambda name, n=network: fleet.ctl(name, "attach", n), members)
    checker = Checker(fleet, networks)
    await wait_for(checker.membership_converged, 60, "every host to see every host alive")
    await wait_for(lambda: checker.converged({n: set() for n in networks}), 60, "empty networks everywhere")
    await checker.baseline()
    say("networks: " + "; ".join(f"{n} = {','.join(m)}" for n, m in networks.items()))

    churn = Churn(fleet)
    halves = nemesis.halves()
    per_network = -(-endpoints // len(networks))
    writes = []
    for network, members in networks.items():
        sides = [[m for m in members if m in half] for half in halves]
        writers = [rng.choice(side) for side in sides if side]  # one writer on each side, chosen by the seed
        for i, writer in enumerate(writers):
            count = per_network // len(writers) + (1 if i < per_network % len(writers) else 0)
            writes.append(churn.create(writer, network, count, f"{writer}-", rate=1500.0))
    started = time.monotonic()
    say(f"churn: {per_network * len(networks):,} endpoints, partition {halves[0]} | {halves[1]} after 0.5 s")
    planned = {n: per_network for n in networks}
    samples: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def sample() -> None:  # convergence over time, for the plot
        while not done.is_set():
            fractions = await checker.fractions(planned)  # stamped when the answers are in
            samples.append({"t": round(time.monotonic() - started, 3), "converged": fractions})
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    churn_task = asyncio.gather(*writes)
    await asyncio.sleep(0.5)
    await nemesis.partition(halves)
    partitioned_at = time.monotonic()
    await churn_task
    churn_done = time.monotonic()
    await asyncio.sleep(max(0.0, hold - (time.monotonic() - partitioned_at)))
    await nemesis.heal_all()
    healed = time.monotonic()
    say(f"churn took {churn_done - started:.1f} s; partition held {healed - partitioned_at:.1f} s; healed")
    expected = churn.truth
    await wait_for(lambda: checker.converged(expected), 120, "every network to converge after heal", 0.05)
    converged = time.monotonic()
    await asyncio.sleep(0.3)  # one more sample at 100 %
    done.set()
    await sampler
    await wait_for(checker.membership_converged, 60, "membership to converge after heal")
    verdict = await checker.verdict(expected)
    return {
        "valid": verdict["valid"],
        "hosts": names,
        "networks": networks,
        "endpoints": sum(map(len, expected.values())),
        "partition": {"groups": halves, "held_s": healed - partitioned_at},
        "convergence_after_heal_s": converged - healed,
        "convergence_after_last_write_s": converged - churn.last_write,
        "churn_seconds": churn_done - started,
        "verdict": verdict,
        "latencies": checker.latencies,
        "samples": samples,
        "fault_windows": [{"label": "halves partition", "start": partitioned_at - started, "end": healed - started}],
        "history": churn.history,
        "faults": nemesis.log,
    }


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inventory", default=str(ROOT / "inventories" / "local"))
    parser.add_argument("--endpoints", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--partition-seconds", type=float, default=8.0, help="how long the halves stay apart")
    parser.add_argument("--results-dir", default=str(ROOT / "results"))
    args = parser.parse_args(argv)
    if args.endpoints < 3:
        print("headline: error: --endpoints must be at least 3 (one per network)", file=sys.stderr)
        return 2
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-headline-s{args.seed}"
    try:
        result = asyncio.run(experiment(args.inventory, args.endpoints, args.seed, args.partition_seconds))
    except InventoryError as exc:
        print(f"headline: error: {exc} (bring the lab up first: make demo does)", file=sys.stderr)
        return 2
    except (FleetError, WaitTimeout) as exc:
        print(f"headline: FAIL: {exc}", file=sys.stderr)
        return 1
    result.update({"run_id": run_id, "seed": args.seed, "commit": _commit()})
    latencies = result.pop("latencies")
    lat = result["verdict"]["latency_s"]
    rows = [
        ("hosts", len(result["hosts"])),
        ("endpoints", f"{result['endpoints']:,} in {len(result['networks'])} networks"),
        ("churn (during partition)", f"{result['churn_seconds']:.1f} s"),
        ("partition held", f"{result['partition']['held_s']:.1f} s"),
        ("converged after heal", f"{result['convergence_after_heal_s']:.2f} s"),
        ("converged after last write", f"{result['convergence_after_last_write_s']:.2f} s"),
        ("entry latency p50 / p99", f"{lat['p50']:.2f} s / {lat['p99']:.2f} s" if lat["p50"] is not None else "-"),
        ("missing / unexpected", f"{len(result['verdict']['missing'])} / {len(result['verdict']['unexpected'])}"),
        ("scope leaks", len(result["verdict"]["scope_leaks"]) + len(result["verdict"]["out_of_scope_received"])),
    ]
    page = report.write(Path(args.results_dir) / run_id, result, latencies, rows)
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"  {k:<{width}}  {v}" for k, v in rows))
    print(f"{'PASS' if result['valid'] else 'FAIL'}: report {page} (seed {args.seed})")
    return 0 if result["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
