"""Maelstrom's broadcast workload (challenges 3d and 3e) in our simulator.

25 nodes, 100 ms one-way latency on every link, 100 writes a second spread over every node for
20 s. Messages are every datagram and every stream frame (request and reply) between agents,
divided by the writes; latency is, per write, the time until the last other node shows it.
Maelstrom's published targets: 3d < 30 msgs/op, median < 400 ms, max < 600 ms; 3e < 20 msgs/op,
median < 1 s, max < 2 s. Its reference (a tree of fanout 4): 11.99 msgs/op, 386 ms, 505 ms.

    python bench/maelstrom.py                       # lan profile, seeds 1-3
    python bench/maelstrom.py --partition 5-15      # halves cut from 5 s to 15 s (challenge 3c)
    python bench/maelstrom.py --set gossip_interval=0.1 --seeds 1-10

Figures from the simulator, deterministic per seed; printed, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent" / "src"))

from gossip_agent.core.table import Change  # noqa: E402
from gossip_agent.sim import PartitionSpec, SimOptions, Simulator, WorkloadSpec  # noqa: E402
from gossip_agent.sim.checker import GroundTruth, Observer, percentile  # noqa: E402

NODES, LATENCY, RATE, SECONDS = 25, 0.100, 100, 20


class _Timing(Observer):
    """The checker's observer, noting per key when it was written and when the last node so far
    first showed it."""

    def __init__(self, truth: GroundTruth) -> None:
        super().__init__(truth)
        self.written: dict[str, float] = {}
        self.reached: dict[str, float] = {}
        self.seen: set[tuple[str, str]] = set()

    def on_change(self, node: str, change: Change, attached: bool) -> None:
        super().on_change(node, change, attached)
        if change.after is None or (node, change.key) in self.seen:
            return
        self.seen.add((node, change.key))
        if change.after.owner == node:
            self.written[change.key] = change.at
        else:
            self.reached[change.key] = max(self.reached.get(change.key, 0.0), change.at)


def run(seed: int, profile: str, overrides: dict[str, float], partition: tuple[float, float] | None) -> dict[str, Any]:
    options = SimOptions(
        seed=seed,
        nodes=NODES,
        profile=profile,
        overrides=overrides,
        latency_min=LATENCY,
        latency_max=LATENCY,
        partitions=(PartitionSpec("halves", *partition),) if partition else (),
        workloads=(WorkloadSpec("net-0", RATE * SECONDS, start=1.0, rate=RATE),),
    )
    sim = Simulator(options)
    sim.observer = observer = _Timing(sim.truth)
    result = sim.run()
    stats = sim._stats()
    streams = sum(v for k, v in stats.items() if k.startswith("streams_opened_"))
    messages = stats.get("datagrams_out", 0) + 2 * streams
    written, reached, seen = observer.written, observer.reached, observer.seen
    everywhere = sum(1 for (_, key) in seen if key in written) == len(written) * NODES
    latencies = [reached[k] - at for k, at in written.items() if k in reached]
    return {
        "valid": result["valid"] and everywhere,
        "msgs_per_op": messages / max(1, len(written)),
        "datagrams_per_op": stats.get("datagrams_out", 0) / max(1, len(written)),
        "streams_per_op": 2 * streams / max(1, len(written)),
        "eager_per_op": stats.get("eager_datagrams", 0) / max(1, len(written)),
        "median": statistics.median(latencies),
        "p99": percentile(latencies, 99),
        "max": max(latencies),
        "after_heal": result["networks"]["net-0"]["convergence_after_settle"] if partition else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1-3", help="A-B or N (default 1-3)")
    parser.add_argument("--profile", default="lan", help="protocol profile (default lan)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="protocol override")
    parser.add_argument("--partition", metavar="START-END", help="cut the nodes in halves for this window (s)")
    args = parser.parse_args()
    first, _, last = args.seeds.partition("-")
    overrides = {name: float(value) for name, _, value in (s.partition("=") for s in args.set)}
    partition = None
    if args.partition:
        start, _, end = args.partition.partition("-")
        partition = (float(start), float(end))
    print(f"maelstrom broadcast: {NODES} nodes, {LATENCY * 1000:.0f} ms latency, {RATE} writes/s for {SECONDS} s, "
          f"profile {args.profile} {overrides or ''} partition {args.partition or 'none'}")  # fmt: skip
    print(f"{'seed':>5} {'valid':>6} {'msgs/op':>8} {'dgrams':>7} {'eager':>6} {'streams':>8} {'median ms':>10} "
          f"{'p99 ms':>7} {'max ms':>7} {'heal s':>7}")  # fmt: skip
    rows = []
    for seed in range(int(first), int(last or first) + 1):
        row = run(seed, args.profile, overrides, partition)
        rows.append(row)
        heal = "-" if row["after_heal"] is None else f"{row['after_heal']:.2f}"
        print(f"{seed:>5} {row['valid']!s:>6} {row['msgs_per_op']:>8.2f} {row['datagrams_per_op']:>7.2f} "
              f"{row['eager_per_op']:>6.2f} {row['streams_per_op']:>8.2f} {row['median'] * 1000:>10.0f} "
              f"{row['p99'] * 1000:>7.0f} {row['max'] * 1000:>7.0f} {heal:>7}", flush=True)  # fmt: skip
    msgs, median = statistics.mean(r["msgs_per_op"] for r in rows), statistics.mean(r["median"] for r in rows)
    print(f"mean: {msgs:.2f} msgs/op, median {median * 1000:.0f} ms, max {max(r['max'] for r in rows) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
