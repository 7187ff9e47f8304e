"""Merge rule, tombstones, withdrawal and delta sync of one network's table."""

from __future__ import annotations

from gossip_agent.core.table import NetworkTable
from gossip_agent.core.wire import TableEvent


def ev(key, owner="a", lamport=1, deleted=False, value=b"v"):
    return TableEvent("net", "t", key, b"" if deleted else value, owner, lamport, 0, deleted)


def view(table):
    return {(e.event.key, e.event.owner, e.event.value) for e in table.visible()}


def sync(src: NetworkTable, dst: NetworkTable, ok=lambda owner: True):
    """One direction of a delta sync, as the node runs it."""
    digest = dst.sync_digest()
    events, full = src.delta_for(digest, held=dst.held_above(digest, 1000))
    dst.absorb(events, src.sync_digest(), full, 0.0, ok)
    return events


def test_higher_lamport_wins_and_ties_break_by_owner_then_delete():
    t = NetworkTable("net")
    assert t.apply(ev("k", "a", 2), 0) is not None
    assert t.apply(ev("k", "b", 1), 0) is None  # older
    assert t.apply(ev("k", "b", 2), 0) is not None  # same time, higher owner
    assert t.apply(ev("k", "a", 2), 0) is None
    change = t.apply(ev("k", "b", 2, deleted=True), 0)  # same version, delete wins
    assert change is not None
    assert change.after is None
    assert not list(t.visible())


def test_tombstone_blocks_a_stale_create_until_reaped():
    t = NetworkTable("net")
    t.apply(ev("k", lamport=5), 0)
    t.apply(ev("k", lamport=6, deleted=True), 10)
    assert t.apply(ev("k", lamport=5), 11) is None
    assert t.reap(now=20, ttl=30) == 0
    assert t.reap(now=40, ttl=30) == 1
    assert t.reaped == {"a": 6}


def test_a_tombstone_taken_late_is_reaped_by_its_delete_time_a_withdrawal_by_ours():
    t = NetworkTable("net")
    late = TableEvent("net", "t", "k", b"", "a", 6, 1_000, True)  # deleted at wall second 1
    t.apply(late, 25)  # taken 24 s later here
    t.apply(ev("w", "b", 3), 0)
    t.withdraw_owner("b", 25)
    assert t.reap(now=30, ttl=30, wall_ms=30_000) == 0
    assert t.reap(now=30, ttl=30, wall_ms=31_000) == 1  # 30 s after the delete, not after arrival
    assert t.reaped == {"a": 6}
    assert t.reap(now=54, ttl=30, wall_ms=1_000_000) == 0  # withdrawn at 25: ours to time
    assert t.reap(now=55, ttl=30, wall_ms=1_000_000) == 1


def test_a_tombstone_stamped_in_the_future_is_still_reaped_a_ttl_after_arrival():
    t = NetworkTable("net")
    t.apply(TableEvent("net", "t", "k", b"", "a", 6, 10**12, True), 0)  # a clock far ahead
    assert t.reap(now=29, ttl=30, wall_ms=0) == 0
    assert t.reap(now=30, ttl=30, wall_ms=0) == 1


def test_merge_is_commutative_and_idempotent():
    events = [ev("k1", "a", 1), ev("k1", "b", 3), ev("k2", "a", 2), ev("k1", "a", 3, deleted=True), ev("k2", "b", 2)]
    a, b = NetworkTable("net"), NetworkTable("net")
    for e in events:
        a.apply(e, 0)
    for e in reversed(events + events):
        b.apply(e, 0)
    assert view(a) == view(b)
    assert a.digest == b.digest
    assert a.count == b.count


def test_withdrawn_entries_come_back_with_the_owners_same_version():
    t = NetworkTable("net")
    t.apply(ev("k", "a", 4), 0)
    changes = t.withdraw_owner("a", 1)
    assert [c.before.key for c in changes] == ["k"]
    assert not list(t.visible())
    assert t.digest == 0
    # moby#47728: a tombstone at the same Lamport time would win and lose the entry for good.
    restored = t.apply(ev("k", "a", 4), 2)
    assert restored is not None
    assert restored.after is not None
    assert view(t) == {("k", "a", b"v")}


def test_delta_sync_sends_only_what_the_peer_lacks_and_raises_watermarks():
    src, dst = NetworkTable("net"), NetworkTable("net")
    for i in range(1, 101):
        src.apply(ev(f"k{i}", "a", i), 0)
    src.watermarks["a"] = 100  # src is the owner: complete
    for i in range(1, 51):
        dst.apply(ev(f"k{i}", "a", i), 0)
    sent = sync(src, dst)
    assert len(sent) == 50  # above dst's watermark (0), less the versions dst said it held
    assert dst.watermarks["a"] == 100
    assert view(dst) == view(src)
    src.apply(ev("k101", "a", 101), 0)
    src.watermarks["a"] = 101
    assert [e.key for e in sync(src, dst)] == ["k101"]  # now only the difference
    assert sync(src, dst) == []  # equal hashes: nothing at all


def test_equal_sets_raise_the_watermark_without_sending():
    src, dst = NetworkTable("net"), NetworkTable("net")
    for t in (src, dst):
        for i in range(1, 11):
            t.apply(ev(f"k{i}", "a", i), 0)
    src.watermarks["a"] = 10
    assert sync(src, dst) == []
    assert dst.watermarks["a"] == 10


def test_peer_behind_a_reaped_tombstone_gets_the_owner_in_full_and_drops_the_stale_entry():
    src, dst = NetworkTable("net"), NetworkTable("net")
    for t in (src, dst):
        t.apply(ev("gone", "a", 1), 0)
        t.apply(ev("kept", "a", 2), 0)
    src.apply(ev("gone", "a", 3, deleted=True), 0)
    src.watermarks["a"] = 3
    src.reap(now=100, ttl=30)  # the tombstone is forgotten; dst never saw it
    events, full = src.delta_for(dst.sync_digest())
    assert full == ["a"]
    dst.absorb(events, src.sync_digest(), full, 0.0, lambda owner: True)
    assert view(dst) == {("kept", "a", b"v")}


def test_absorb_skips_owners_that_are_gone_and_keeps_their_watermark_low():
    src, dst = NetworkTable("net"), NetworkTable("net")
    src.apply(ev("k", "dead", 5), 0)
    src.watermarks["dead"] = 5
    sync(src, dst, ok=lambda owner: owner != "dead")
    assert not list(dst.visible())
    assert "dead" not in dst.watermarks


def test_withdrawn_owner_reports_no_watermark_and_is_not_raised_by_a_peer_that_withdrew_too():
    # Two nodes that both withdrew an owner agree on its (empty) visible set; neither may
    # conclude it is complete for that owner, or a sync with a node that still has the owner's
    # entries would send nothing back (found by the 30-host headline run).
    a, b = NetworkTable("net"), NetworkTable("net")
    for t in (a, b):
        for i in range(1, 4):
            t.apply(ev(f"k{i}", "o", i), 0)
        t.watermarks["o"] = 3
        t.withdraw_owner("o", 1)
    b.watermarks["o"] = 3  # as if b's mark had been raised while withdrawn
    assert a.sync_digest()["o"] == (0, 0)
    assert b.sync_digest()["o"] == (0, 0)
    events, full = b.delta_for(a.sync_digest())
    a.absorb(events, {"o": (3, 0)}, full, 2.0, lambda owner: True)
    assert "o" not in a.watermarks
    full_copy = NetworkTable("net")
    for i in range(1, 4):
        full_copy.apply(ev(f"k{i}", "o", i), 0)
    full_copy.watermarks["o"] = 3
    sync(full_copy, a)
    assert {k for k, _, _ in view(a)} == {"k1", "k2", "k3"}
    assert a.watermarks["o"] == 3


def test_versions_held_above_the_mark_are_not_sent_again():
    src, dst = NetworkTable("net"), NetworkTable("net")
    for i in range(1, 6):
        src.apply(ev(f"k{i}", lamport=i), 0)
    src.watermarks["a"] = 5  # src is the owner: complete
    sync(src, dst)
    assert dst.watermarks["a"] == 5
    for i in range(6, 11):
        src.apply(ev(f"k{i}", lamport=i), 0)
    for i in (6, 8, 10):  # came by the tree: above dst's mark
        dst.apply(ev(f"k{i}", lamport=i), 0)
    digest = dst.sync_digest()
    held = dst.held_above(digest, 1000)
    assert held == {"a": frozenset({6, 8, 10})}
    events, _ = src.delta_for(digest, held=held)
    assert sorted(e.lamport for e in events) == [7, 9]
    events, _ = src.delta_for(digest)  # without them, the whole delta above the mark
    assert sorted(e.lamport for e in events) == [6, 7, 8, 9, 10]


def test_held_leaves_out_withdrawn_owners_ourselves_and_what_does_not_fit():
    t = NetworkTable("net")
    for i in range(1, 4):
        t.apply(ev(f"a{i}", "a", i), 0)
        t.apply(ev(f"b{i}", "b", i), 0)
        t.apply(ev(f"me{i}", "me", i), 0)
        t.apply(ev(f"gone{i}", "gone", i), 0)
    t.withdraw_owner("gone", 0)
    assert set(t.held_above(t.sync_digest(), 1000, skip="me")) == {"a", "b"}
    assert sum(map(len, t.held_above({}, 4, skip="me").values())) <= 4
    assert t.held_above({}, 2) == {}  # three times per owner: none fits, each is sent whole
