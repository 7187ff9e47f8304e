"""The long fuzz run: a million generated and mutated datagrams and 100,000 stream frames into one
live core (see tests/agent/fuzzing.py). Prints inputs per second, exceptions (must be 0), and memory
at start and end; exit 1 on any exception.

    python bench/fuzz.py [--datagrams 1000000] [--frames 100000] [--seed 1]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import traceback
import tracemalloc
from pathlib import Path

root = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(root / "agent" / "src"), str(root)]

from tests.agent.fuzzing import datagrams, feed_frame, frames, target  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datagrams", type=int, default=1_000_000)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"fuzz seed {args.seed}: {args.datagrams:,} datagrams, {args.frames:,} frames", flush=True)
    node = target()
    tracemalloc.start()
    exceptions = 0
    now = 0.0
    started = time.perf_counter()
    memory = []
    for i, data in enumerate(itertools.islice(datagrams(args.seed), args.datagrams)):
        now += 0.001
        try:
            node.handle_datagram(("198.18.0.2", 7946), data, now)
            if i % 100 == 0:
                node.tick(now)
        except Exception:
            exceptions += 1
            if exceptions <= 3:
                traceback.print_exc()
        node.take_datagrams()
        node.take_streams()
        node.take_changes()
        if i % (args.datagrams // 10 or 1) == 0:
            memory.append(tracemalloc.get_traced_memory()[0])
    datagram_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for data in itertools.islice(frames(args.seed), args.frames):
        try:
            feed_frame(node, data, now)
        except Exception:
            exceptions += 1
            if exceptions <= 3:
                traceback.print_exc()
    frame_seconds = time.perf_counter() - started
    memory.append(tracemalloc.get_traced_memory()[0])
    print(f"datagrams: {args.datagrams / datagram_seconds:,.0f}/s   frames: {args.frames / frame_seconds:,.0f}/s")
    print(f"traced memory MiB at each tenth: {' '.join(f'{m / 2**20:.1f}' for m in memory)}")
    print(f"members {len(node.membership.members)}  attachments {len(node.attachments)}  "
          f"cluster queue {len(node.cluster_queue)}")  # fmt: skip
    dropped = {k: v for k, v in sorted(node.stats.items()) if k.startswith("dropped_")}
    print(f"dropped: {dropped}")
    print(f"exceptions outside the protocol-error path: {exceptions}")
    return 1 if exceptions else 0


if __name__ == "__main__":
    sys.exit(main())
