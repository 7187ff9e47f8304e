"""Transmit-limited queue: limits, supersession, fewest-sent-first, packing, pruning."""

from __future__ import annotations

from gossip_agent.core.broadcast import BroadcastQueue


def test_each_event_is_sent_limit_times_then_leaves():
    q = BroadcastQueue()
    q.put("a", b"x" * 10)
    sent = [q.take(100, limit=3) for _ in range(4)]
    assert sent == [[b"x" * 10]] * 3 + [[]]
    assert len(q) == 0


def test_newer_event_for_the_same_key_supersedes_the_older():
    q = BroadcastQueue()
    q.put("k", b"old")
    q.put("k", b"new")
    assert q.take(100, limit=5) == [b"new"]


def test_fewest_sent_first_then_newest_and_space_is_respected():
    q = BroadcastQueue()
    q.put("a", b"a" * 40)
    assert q.take(100, limit=5) == [b"a" * 40]
    q.put("b", b"b" * 40)
    q.put("c", b"c" * 40)
    assert q.take(100, limit=5) == [b"c" * 40, b"b" * 40]  # never-sent first, newest first
    assert q.take(45, limit=5) == [b"c" * 40]


def test_full_queue_prunes_the_most_sent_oldest_first():
    q = BroadcastQueue(max_items=2)
    q.put("a", b"a")
    q.take(10, limit=5)
    q.put("b", b"b")
    q.put("c", b"c")
    assert q.dropped == 1
    assert sorted(q.take(10, limit=5)) == [b"b", b"c"]
