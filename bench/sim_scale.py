"""Simulator benchmarks: dissemination rounds, mass churn, and wall time at scale. Prints tables.

    python bench/sim_scale.py                # everything (about 10-15 minutes on 2 cores)
    python bench/sim_scale.py --only spread  # one part: spread | churn | wall
    python bench/sim_scale.py --seeds 5      # fewer seeds for the dissemination part

Figures are virtual time from the simulator (deterministic per seed), except the wall-time part.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent" / "src"))

from gossip_agent.core.config import Config  # noqa: E402
from gossip_agent.sim import SimOptions, Simulator, WorkloadSpec, spread_networks  # noqa: E402

GOSSIP = Config().gossip_interval


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def spread(sizes: list[int], seeds: int) -> None:
    """One new entry in a network spanning all N nodes: rounds until every node has it."""
    print(f"\n## One entry to every node (static membership, {seeds} seeds per N, gossip {GOSSIP * 1000:.0f} ms)")
    print(
        f"{'N':>7} {'p50 rounds':>10} {'p99 rounds':>10} {'p50 s':>7} {'p99 s':>7} {'bound':>7} {'ok':>4} {'wall s':>7}"
    )
    for n in sizes:
        rounds, wall = [], time.perf_counter()
        for seed in range(1, seeds + 1):
            options = SimOptions(
                seed=seed,
                nodes=n,
                membership="static",
                workloads=(WorkloadSpec("net-0", 1, start=1.0, writers=1),),
                liveness_bound=30.0,
                check_interval=0.02,
            )
            result = Simulator(options).run()
            net = result["networks"]["net-0"]
            assert result["valid"], f"N={n} seed={seed} did not converge"
            rounds.append(net["convergence_after_settle"] / GOSSIP)
        bound = math.log(n, 4) + math.log(n) / 3
        p50, p99 = statistics.median(rounds), quantile(rounds, 0.99)
        print(
            f"{n:>7} {p50:>10.2f} {p99:>10.2f} {p50 * GOSSIP:>7.2f} {p99 * GOSSIP:>7.2f} {bound:>7.2f} "
            f"{'yes' if p99 <= bound + 2 else 'NO':>4} {time.perf_counter() - wall:>7.1f}",
            flush=True,
        )


def churn(counts: list[int], seed: int) -> None:
    """Mass churn: entries written at once on one node of a 30-node network (SWIM membership)."""
    print("\n## Mass churn on one node of a 30-node network (SWIM, all written at once)")
    print(
        f"{'entries':>8} {'converged s':>11} {'p99 s':>7} {'copies/event/node':>17} {'UDP KiB/node':>12} {'wall s':>7}"
    )
    for count in counts:
        for deleting in (False, True):
            workload = WorkloadSpec(
                "net-0", count, start=1.0, writers=1, delete_fraction=1.0 if deleting else 0.0, delete_after=10.0
            )
            result = Simulator(SimOptions(seed=seed, nodes=30, workloads=(workload,))).run()
            assert result["valid"], f"churn {count} did not converge"
            net, traffic = result["networks"]["net-0"], result["traffic"]
            label = f"{count} del" if deleting else str(count)
            print(
                f"{label:>8} {net['convergence_after_settle']:>11.2f} {result['latency']['p99']:>7.2f} "
                f"{traffic['copies_per_event_per_node']:>17.2f} {traffic['bytes_out_per_node'] / 1024:>12,.0f} "
                f"{result['wall_seconds']:>7.1f}",
                flush=True,
            )


def wall(seed: int) -> None:
    print("\n## Wall time of big simulations (one process, one core)")
    print(f"{'run':<44} {'virtual s':>9} {'wall s':>7} {'valid':>6}")
    names = SimOptions(nodes=1000).node_names()
    runs = [
        (
            "10,000 nodes x 100 entries (static)",
            SimOptions(
                seed=seed, nodes=10_000, membership="static", workloads=(WorkloadSpec("net-0", 100, start=1.0),)
            ),
        ),
        (
            "1,000 nodes x 4 networks x 10,000 entries (SWIM)",
            SimOptions(
                seed=seed,
                nodes=1000,
                networks=spread_networks(names, 4),
                workloads=tuple(WorkloadSpec(f"net-{i}", 2500, start=1.0) for i in range(4)),
            ),
        ),
    ]
    for label, options in runs:
        result = Simulator(options).run()
        print(
            f"{label:<44} {result['virtual_time']:>9.2f} {result['wall_seconds']:>7.1f} {str(result['valid']):>6}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("spread", "churn", "wall"))
    parser.add_argument("--seeds", type=int, default=20, help="seeds per N in the spread part (default 20)")
    parser.add_argument("--sizes", default="100,1000,10000", help="N values of the spread part")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.only in (None, "spread"):
        spread([int(s) for s in args.sizes.split(",")], args.seeds)
    if args.only in (None, "churn"):
        churn([1000, 10_000], args.seed)
    if args.only in (None, "wall"):
        wall(args.seed)


if __name__ == "__main__":
    main()
