"""Heal benchmark (simulator): how soon after the last heal of combined faults do membership and
tables converge? The scenario of issue #14: 100-200 nodes, two overlapping asymmetric partitions,
10 % of nodes crashed and restarted, 10 % loss, 5 % duplication, 1-50 ms latency, churn.

    python bench/heal_bench.py --seeds 1-20

Prints one row per seed and the p50 and max; figures, never asserted.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from gossip_agent.sim import CrashSpec, PartitionSpec, SimOptions, Simulator, WorkloadSpec


def options(seed: int) -> SimOptions:
    rng = random.Random(seed)
    return SimOptions(
        seed=seed,
        nodes=rng.randint(100, 200),
        partitions=(
            PartitionSpec("halves", 5.0, 25.0, symmetric=False),
            PartitionSpec("random-halves", 15.0, 35.0, symmetric=False),
        ),  # fmt: skip
        crashes=(CrashSpec(0.1, at=10.0, restart_at=30.0),),
        loss=0.10,
        duplicate=0.05,
        latency_min=0.001,
        latency_max=0.050,
        workloads=(WorkloadSpec("net-0", 2000, start=2.0, rate=100, delete_fraction=0.2),),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1-5", help="A-B or N (default 1-5)")
    args = parser.parse_args()
    first, _, last = args.seeds.partition("-")
    seeds = range(int(first), int(last or first) + 1)
    print(f"{'seed':>5} {'nodes':>6} {'valid':>6} {'members s':>10} {'tables s':>9} {'wall s':>7}")
    members, tables = [], []
    for seed in seeds:
        started = time.monotonic()
        simulator = Simulator(options(seed))
        result = simulator.run()
        converged = result["membership_converged_at"]
        member_after = float("nan") if converged is None else max(0.0, converged - result["settle_at"])
        table_after = max((n["convergence_after_settle"] or float("nan")) for n in result["networks"].values())
        members.append(member_after)
        tables.append(table_after)
        print(f"{seed:>5} {len(simulator.names):>6} {result['valid']!s:>6} {member_after:>10.2f} {table_after:>9.2f} "
              f"{time.monotonic() - started:>7.1f}", flush=True)  # fmt: skip
    print(f"after the last heal: membership p50 {statistics.median(members):.2f} s, max {max(members):.2f} s; "
          f"tables p50 {statistics.median(tables):.2f} s, max {max(tables):.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
