"""Hostile input into a live core: nothing but the protocol-error path, ever (short run; the long
one is bench/fuzz.py)."""

from __future__ import annotations

import itertools

from gossip_agent.core.membership import State
from tests.agent.fuzzing import datagrams, feed_frame, frames, target

SEED = 20261130


def test_generated_and_mutated_datagrams_and_frames_never_raise():
    node = target()
    print(f"fuzz seed {SEED}")
    now = 0.0
    for i, data in enumerate(itertools.islice(datagrams(SEED), 30_000)):
        now += 0.001
        node.handle_datagram(("198.18.0.2", 7946), data, now)
        if i % 100 == 0:
            node.tick(now)
        node.take_datagrams()
        node.take_streams()
        node.take_changes()
    for data in itertools.islice(frames(SEED), 3_000):
        feed_frame(node, data, now)
    dropped = sum(v for k, v in node.stats.items() if k.startswith("dropped_"))
    assert dropped > 10_000  # the inputs were mostly refused, and counted
    assert node.stats["dropped_probe_flood"] > 0
    # Still a working node: it writes, and its own membership record is sane.
    node.write("net", "ep", "after", b"v", now, 0)
    assert node.membership.members["a"].state == State.ALIVE
    assert node.clock.time < 2**62
    assert len(node.membership.members) < 1000
