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
    digest = dst.sync_digest(requesting=True)
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
    assert t.reap(now=30, ttl=30, wall_ms=30_000, floor=5) == 0
    assert t.reap(now=30, ttl=30, wall_ms=31_000, floor=5) == 1  # 30 s after the delete, not after arrival
    assert t.reaped == {"a": 6}
    assert t.reap(now=54, ttl=30, wall_ms=1_000_000, floor=5) == 0  # withdrawn at 25: ours to time
    assert t.reap(now=55, ttl=30, wall_ms=1_000_000, floor=5) == 1


def test_a_delete_stamped_long_ago_is_still_held_the_floor():
    """Forged with wall time 0, or from a clock far behind (or ours far ahead): its owner must
    still have time to answer it, and the copies it deleted must still meet it."""
    t = NetworkTable("net")
    t.apply(TableEvent("net", "t", "k", b"", "a", 6, 0, True), 100)
    assert t.reap(now=104, ttl=30, wall_ms=10**9, floor=5) == 0
    assert t.reap(now=105, ttl=30, wall_ms=10**9, floor=5) == 1


def test_a_tombstone_stamped_in_the_future_is_still_reaped_a_ttl_after_arrival():
    t = NetworkTable("net")
    t.apply(TableEvent("net", "t", "k", b"", "a", 6, 10**12, True), 0)  # a clock far ahead
    assert t.reap(now=29, ttl=30, wall_ms=0, floor=5) == 0
    assert t.reap(now=30, ttl=30, wall_ms=0, floor=5) == 1


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


def _reaped_all_of_o() -> NetworkTable:
    """A table complete for owner o up to 5 whose only entry of o, k, was deleted at 5 and reaped."""
    t = NetworkTable("net")
    t.apply(ev("k", "o", 3), 0)
    t.apply(ev("k", "o", 5, deleted=True), 0)
    t.watermarks["o"] = 5
    assert t.reap(now=100, ttl=30) == 1
    assert not t.entries
    return t


def _missed_the_delete() -> NetworkTable:
    t = NetworkTable("net")
    t.apply(ev("k", "o", 3), 0)
    t.watermarks["o"] = 3
    return t


def test_a_copy_that_missed_a_delete_for_a_whole_ttl_is_dropped_by_a_peer_that_holds_nothing_of_its_owner():
    # Nothing of o is left at the peer to send, and no sync used to mention o: the stale copy
    # stayed, digests differed for ever, and a joiner synced from it got the deleted entry back.
    peer, stale = _reaped_all_of_o(), _missed_the_delete()
    events, full = peer.delta_for(stale.sync_digest(requesting=True), held={})
    assert (events, full) == ([], ["o"])
    stale.absorb(events, peer.sync_digest(), full, 0.0, lambda owner: True)
    assert not list(stale.visible())
    assert stale.digest == peer.digest == 0
    assert peer.delta_for(stale.sync_digest()) == ([], [])  # agreed: nothing more to say


def test_an_owner_that_dies_after_its_deletes_were_reaped_keeps_the_mark_over_them():
    peer, stale = _reaped_all_of_o(), _missed_the_delete()
    peer.withdraw_owner("o", 200)
    assert peer.watermarks["o"] == 5
    assert sync(stale, peer) == []  # the stale copy is below our mark: not taken back
    assert not list(peer.visible())
    empty = NetworkTable("net")
    empty.withdraw_owner("x", 200)
    empty.watermarks["x"] = 4
    empty.withdraw_owner("x", 300)
    assert "x" not in empty.watermarks  # nothing of x held or reaped here: the mark would only grow


def test_a_forgotten_owner_with_nothing_left_here_takes_its_mark_and_reaped_time_with_it():
    t = _reaped_all_of_o()
    t.apply(ev("j", "p", 2), 0)
    t.watermarks["p"] = 2
    t.forget_owner("o")
    t.forget_owner("p")  # still holds an entry: kept
    assert "o" not in t.watermarks
    assert "o" not in t.reaped
    assert t.watermarks["p"] == 2
    assert set(t.sync_digest()) == {"p"}


def test_a_full_owner_gone_meanwhile_is_not_dropped_by_a_delta_that_sent_none_of_it():
    peer, stale = _reaped_all_of_o(), _missed_the_delete()
    events, full = peer.delta_for(stale.sync_digest(requesting=True), held={})
    stale.absorb(events, peer.sync_digest(), full, 0.0, lambda owner: owner != "o")
    assert view(stale) == {("k", "o", b"v")}  # left to its withdrawal and reaping


def test_absorb_skips_owners_that_are_gone_and_keeps_their_watermark_low():
    src, dst = NetworkTable("net"), NetworkTable("net")
    src.apply(ev("k", "dead", 5), 0)
    src.watermarks["dead"] = 5
    sync(src, dst, ok=lambda owner: owner != "dead")
    assert not list(dst.visible())
    assert "dead" not in dst.watermarks


def _withdrawn(*lamports: int) -> NetworkTable:
    """A table that held owner o's k<i> at time i, complete up to the last, and then withdrew o."""
    t = NetworkTable("net")
    for i in lamports:
        t.apply(ev(f"k{i}", "o", i), 0)
    t.watermarks["o"] = max(lamports)
    t.withdraw_owner("o", 1)
    return t


def test_withdrawn_owner_vouches_for_nothing_and_a_peer_that_withdrew_too_restores_nothing():
    # Two nodes that both withdrew an owner agree on its (empty) visible set; neither may
    # conclude it is complete for that owner, or a sync with a node that still has the owner's
    # entries would send nothing back (found by the 30-host headline run).
    a, b = _withdrawn(1, 2, 3), _withdrawn(1, 2, 3)
    assert a.sync_digest()["o"] == (0, 0)
    mark, whole = a.sync_digest(requesting=True)["o"]
    assert mark == 3  # it asks only for what is above...
    assert whole != 0  # ...showing all it holds, hidden too
    assert sync(b, a) == []
    assert not list(a.visible())
    assert "o" not in a.watermarks  # b's set did not prove ours: the next sync brings o whole
    assert "o" not in a.held_above(a.sync_digest(requesting=True), 1000)


def test_withdrawn_versions_come_back_from_a_peer_complete_to_our_mark_without_being_sent():
    a = _withdrawn(1, 2, 3)
    full_copy = _withdrawn(1, 2, 3)
    full_copy.apply(ev("k1", "o", 5, deleted=True), 2)  # while o was gone to a: k1 deleted...
    full_copy.apply(ev("k6", "o", 6), 2)  # ...and k6 written
    full_copy.watermarks["o"] = 6
    full_copy.apply(ev("k2", "o", 2), 3)  # o is back at full_copy: its same versions restore them
    full_copy.apply(ev("k3", "o", 3), 3)
    assert {e.key for e in sync(full_copy, a)} == {"k1", "k6"}  # above a's mark only
    assert {k for k, _, _ in view(a)} == {"k2", "k3", "k6"}
    assert a.watermarks["o"] == 6
    assert a.digest == full_copy.digest


def test_a_hidden_version_the_peer_lacks_is_not_shown_and_the_next_sync_asks_for_all():
    """k9 at time 2 was never the owner's (forged in its name, say): the peer is complete to our
    mark without it. Shown again here alone, it would be a difference no sync mends (marks
    agree); instead nothing is shown and the mark goes (seed 873 of the generated runs)."""
    a = _withdrawn(1, 3)
    a.apply(ev("k9", "o", 2), 0)  # taken while o was gone: withdrawn later... as if
    a.withdraw_owner("o", 1)
    full_copy = NetworkTable("net")
    for i in (1, 3):
        full_copy.apply(ev(f"k{i}", "o", i), 0)
    full_copy.watermarks["o"] = 3
    assert sync(full_copy, a) == []
    assert not list(a.visible())
    assert "o" not in a.watermarks
    assert {e.key for e in sync(full_copy, a)} == {"k1", "k3"}  # all of it, as for a stranger
    assert {k for k, _, _ in view(a)} == {"k1", "k3"}


def test_hidden_versions_above_our_mark_are_held_not_sent_and_shown_again():
    a = _withdrawn(1, 2)
    for i in (3, 4):  # by the tree, above the mark
        a.apply(ev(f"k{i}", "o", i), 0)
    a.withdraw_owner("o", 1)
    full_copy = NetworkTable("net")
    for i in (1, 2, 3, 4):
        full_copy.apply(ev(f"k{i}", "o", i), 0)
    full_copy.watermarks["o"] = 4
    assert sync(full_copy, a) == []
    assert {k for k, _, _ in view(a)} == {"k1", "k2", "k3", "k4"}


def test_a_hidden_version_the_owner_rewrote_at_the_same_time_is_replaced_by_the_next_sync():
    """A new life that lost its journal may reuse a time with another value: held by time, it
    would never be sent; the sets' hashes differ, so the mark goes and the owner comes whole."""
    a = _withdrawn(1, 2)
    a.apply(ev("k3", "o", 3, value=b"old"), 0)
    a.withdraw_owner("o", 1)
    full_copy = NetworkTable("net")
    for i in (1, 2):
        full_copy.apply(ev(f"k{i}", "o", i), 0)
    full_copy.apply(ev("k3", "o", 3, value=b"new"), 0)
    full_copy.watermarks["o"] = 3
    sync(full_copy, a)
    sync(full_copy, a)
    assert view(a) == view(full_copy)
    assert a.digest == full_copy.digest


def test_withdrawn_versions_stay_hidden_after_a_sync_from_a_peer_behind_our_mark():
    a, behind = _withdrawn(1, 2, 3), NetworkTable("net")
    behind.apply(ev("k1", "o", 1), 0)
    behind.watermarks["o"] = 1
    sync(behind, a)
    assert not list(a.visible())


def test_withdrawn_versions_a_reaped_delete_superseded_are_dropped_not_restored():
    a, full_copy = _withdrawn(1, 2, 3), NetworkTable("net")
    for i in (2, 3):
        full_copy.apply(ev(f"k{i}", "o", i), 0)
    full_copy.apply(ev("k1", "o", 5, deleted=True), 0)
    full_copy.watermarks["o"] = 5
    assert full_copy.reap(now=100, ttl=30) == 1  # the delete of k1 is reaped there
    sync(full_copy, a)
    assert {k for k, _, _ in view(a)} == {"k2", "k3"}
    assert a.get("t", "k1") is None


def test_reaping_withdrawn_versions_forgets_the_mark_they_made_true():
    a = _withdrawn(1, 2, 3)
    assert a.reap(now=100, ttl=30) == 3
    assert "o" not in a.watermarks  # a peer must send all of o again


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


def test_held_lists_all_our_own_versions_last_and_leaves_out_unproven_withdrawn_owners_and_what_does_not_fit():
    t = NetworkTable("net")
    for i in range(1, 4):
        t.apply(ev(f"a{i}", "a", i), 0)
        t.apply(ev(f"b{i}", "b", i), 0)
        t.apply(ev(f"me{i}", "me", i), 0)
        t.apply(ev(f"gone{i}", "gone", i), 0)
    t.withdraw_owner("gone", 0)
    digest = {o: (2, 0) for o in ("a", "b", "me", "gone")}
    assert t.held_above(digest, 1000, own="me") == {"a": {3}, "b": {3}, "gone": {3}}  # ours only when asked
    held = t.held_above(digest, 1000, own="me", list_own=True)
    assert held == {"a": {3}, "b": {3}, "gone": {3}, "me": {1, 2, 3}}  # ours below the mark too
    t.settle({}, {}, 1.0, lambda owner: True)  # a peer that shows none of gone's versions
    assert set(t.held_above(t.sync_digest(), 1000, own="me", list_own=True)) == {"a", "b", "me"}
    assert set(t.held_above({}, 6, own="me", list_own=True)) == {"a", "b"}  # others first; ours did not fit
    assert t.held_above({}, 2) == {}  # three times per owner: none fits, each is sent whole


def test_the_owner_is_shown_each_copy_in_its_name_it_does_not_hold_below_its_mark_too():
    t = NetworkTable("net")
    for i in range(1, 4):
        t.apply(ev(f"me{i}", "me", i), 0)
    mine = {1, 3}  # what the owner lists: version 2 is a former life's, or a forgery
    events, _ = t.delta_for({"me": (10, 1)}, "me", {"me": mine})
    assert [e.lamport for e in events] == [2]
    events, _ = t.delta_for({"me": (10, 1)}, "other", {"me": mine})
    assert events == [], "no one else is shown what lies below its mark"
    t.watermarks["me"] = 10  # as complete as the owner by our mark, and still different:
    events, _ = t.delta_for({"me": (10, 1)}, "me", {"me": mine})
    assert sorted(e.lamport for e in events) == [1, 2, 3], "a version forged at a time it uses, too"


def test_a_peer_as_complete_for_us_as_we_are_that_differs_is_sent_all_of_ours():
    """A tombstone in our name reached us below our mark after the peer took that mark: no sync
    would send it otherwise, and digests differed for ever (generated seed 2545)."""
    t = NetworkTable("net")
    for i in range(1, 4):
        t.apply(ev(f"me{i}", "me", i), 0)
    t.watermarks["me"] = 3
    events, _ = t.delta_for({"me": (3, 1)}, "peer", None, own="me")
    assert sorted(e.lamport for e in events) == [1, 2, 3]
    events, _ = t.delta_for({"me": (2, 1)}, "peer", None, own="me")
    assert [e.lamport for e in events] == [3], "a peer behind us gets what lies above its mark"
