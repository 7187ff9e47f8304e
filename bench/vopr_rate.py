"""Generated runs: seeds per minute per core by cluster size, and what shrinking a failure costs.

    python bench/vopr_rate.py                      # 20 and 200 nodes, one process
    python bench/vopr_rate.py --sizes 20,50 --seconds 60

Each size runs seeds on one core (no pool) for about `--seconds`, then prints seeds/min and the
median virtual and wall time per seed. The shrink part re-introduces one bug (an owner adopting
copies of its own entries) in this process only, finds a failing seed and shrinks it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent" / "src"))

from gossip_agent.core.node import Node  # noqa: E402
from gossip_agent.sim import vopr  # noqa: E402
from gossip_agent.sim.schedule import Knobs, generate  # noqa: E402


def rate(nodes: int, seconds: float) -> None:
    knobs = Knobs(nodes=(nodes, nodes))
    started = time.perf_counter()
    outcomes = []
    seed = 0
    while time.perf_counter() - started < seconds:
        seed += 1
        outcomes.append(vopr.run_seed(seed, knobs))
    wall = time.perf_counter() - started
    failed = [o.seed for o in outcomes if not o.valid]
    print(
        f"{nodes:>5} nodes  {len(outcomes):>5} seeds  {len(outcomes) / wall * 60:>7.1f} seeds/min/core  "
        f"median {statistics.median(o.virtual_time for o in outcomes):6.1f} s virtual, "
        f"{statistics.median(o.wall_seconds for o in outcomes):5.2f} s wall per seed  failed {failed or 'none'}",
        flush=True,
    )


def shrink_cost() -> None:
    Node._answer_own = lambda self, state, event, now: None  # type: ignore[method-assign]
    Node.owner_ok = lambda self, network, owner: True  # type: ignore[method-assign]
    knobs = Knobs()
    for seed in range(1, 200):
        outcome = vopr.run_seed(seed, knobs)
        if not outcome.valid:
            started = time.perf_counter()
            shrunk, runs = vopr.shrink(generate(seed, knobs), outcome.invariant or "")
            print(
                f"shrink (owner rule removed): seed {seed} {outcome.invariant}: {outcome.steps} -> "
                f"{len(shrunk.steps)} steps in {runs} runs, {time.perf_counter() - started:.1f} s"
            )
            return
    print("shrink: no failing seed found with the owner rule removed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="20,200", help="cluster sizes, comma-separated (default 20,200)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds per size (default 60)")
    args = parser.parse_args()
    for size in (int(s) for s in args.sizes.split(",")):
        rate(size, args.seconds)
    shrink_cost()


if __name__ == "__main__":
    main()
