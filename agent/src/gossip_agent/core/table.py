"""One network's tables: entries, tombstones, the merge rule, and digests for delta sync.

Merge rule: of two versions of (table, key), the one with the higher (Lamport time, owner, deleted)
wins; a delete is a tombstone kept for `tombstone_ttl` so no stale copy can bring the entry back.

Delta sync (Scuttlebutt-style): every entry has one owner whose Lamport times only grow. For each
owner we keep a *watermark*: the Lamport time up to which we are known to hold all of that owner's
writes (or newer versions that superseded them). A peer that sends us every entry of owner `o`
above our watermark, and is itself complete up to its own watermark, lets us raise ours to its.
Beside the watermark goes a 64-bit XOR hash of the owner's entries, so two nodes that already agree
(because rumours delivered everything) see that at once and send nothing.

A *withdrawn* entry belongs to an owner that died or left the network: it is hidden and never sent,
but remembered so that the owner's live copy at the same Lamport time restores it when the owner
comes back (a tombstone would win that tie and the entry would be lost: moby#47728).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass

try:  # hashlib's blake2b is this one; importing hashlib also maps OpenSSL (~3.5 MiB of every agent)
    from _blake2 import blake2b
except ImportError:  # an interpreter without the builtin module
    from hashlib import blake2b

from .wire import OwnerDigest, TableEvent

EntryKey = tuple[str, str]  # (table, key)


def entry_hash(event: TableEvent) -> int:
    """64 bits of the whole version, value included: two holders of one (owner, key, time) with
    different values (a time reused after a lost journal) must see that they differ."""
    text = f"{event.owner}\x00{event.table}\x00{event.key}\x00{event.lamport}\x00{event.deleted:d}\x00"
    return int.from_bytes(blake2b(text.encode() + event.value, digest_size=8).digest(), "big")


def version(event: TableEvent) -> tuple[int, str, bool, bytes]:
    """The merge order: the higher version wins; the value breaks a tie no honest owner makes, so
    that every holder picks the same one."""
    return event.lamport, event.owner, event.deleted, event.value


@dataclass(slots=True)
class Entry:
    event: TableEvent
    seen_at: float  # local time this version arrived (or was written here)
    hash: int
    withdrawn: bool = False
    # Sent on down the network's eager tree from here: a version that came by sync first is sent
    # on when its copy from the tree arrives (our subtree waits for it), and only then.
    pushed: bool = False

    @property
    def visible(self) -> bool:
        return not self.event.deleted and not self.withdrawn


@dataclass(frozen=True, slots=True)
class Change:
    """A stored version replaced another; `before`/`after` are what readers saw (None: nothing).

    `deleted`: what readers saw went away because its owner deleted it (a tombstone), not because
    the owner died or left (a withdrawal, which the owner's return undoes)."""

    network: str
    table: str
    key: str
    before: TableEvent | None
    after: TableEvent | None
    at: float
    deleted: bool = False

    @property
    def visible(self) -> bool:
        """Whether readers of the table see a difference."""
        return self.before is not None or self.after is not None


class NetworkTable:
    """All tables of one network as one node holds them."""

    def __init__(self, network: str) -> None:
        self.network = network
        self.entries: dict[EntryKey, Entry] = {}
        self._by_owner: dict[str, dict[EntryKey, Entry]] = {}
        self._owner_hash: dict[str, int] = {}
        self.watermarks: dict[str, int] = {}
        # Highest Lamport time of a reaped tombstone per owner: a peer whose watermark is below it
        # may still hold the deleted entry, so it gets that owner's entries in full.
        self.reaped: dict[str, int] = {}
        # Owners with withdrawn entries, and how many: for them we are not complete, whatever
        # our watermark said, so we vouch with mark 0 and do not raise it (see sync_digest/settle).
        self._withdrawn: dict[str, int] = {}
        # Withdrawn owners whose hidden versions a peer's set did not prove current: they are not
        # listed as held, so the next sync sends all of the owner's versions (`held_above`).
        self._unproven: set[str] = set()
        self.digest = 0
        self.count = 0  # stored versions that count in the digest (live entries and tombstones)
        self.live = 0  # visible entries, kept as they change: readers poll it, and must not walk the table

    # --- reading ------------------------------------------------------------------------------

    def visible(self) -> Iterator[Entry]:
        return (e for e in self.entries.values() if e.visible)

    def get(self, table: str, key: str) -> Entry | None:
        return self.entries.get((table, key))

    def owners(self) -> list[str]:
        return list(self._by_owner)

    def owned_by(self, owner: str) -> list[Entry]:
        return list(self._by_owner.get(owner, {}).values())

    # --- merging ------------------------------------------------------------------------------

    def _unlink(self, key: EntryKey, entry: Entry) -> None:
        owner = entry.event.owner
        self.live -= entry.visible
        if not entry.withdrawn:
            self._owner_hash[owner] ^= entry.hash
            self.digest ^= entry.hash
            self.count -= 1
        elif self._withdrawn[owner] == 1:
            del self._withdrawn[owner]
        else:
            self._withdrawn[owner] -= 1
        bucket = self._by_owner[owner]
        del bucket[key]
        if not bucket:
            del self._by_owner[owner]
            self._owner_hash.pop(owner, None)

    def _link(self, key: EntryKey, entry: Entry) -> None:
        owner = entry.event.owner
        self.live += entry.visible
        self._by_owner.setdefault(owner, {})[key] = entry
        if not entry.withdrawn:
            self._owner_hash[owner] = self._owner_hash.get(owner, 0) ^ entry.hash
            self.digest ^= entry.hash
            self.count += 1
        else:
            self._withdrawn[owner] = self._withdrawn.get(owner, 0) + 1

    def apply(self, event: TableEvent, now: float) -> Change | None:
        """Merge one version; returns the change (stored), or None when ours is as new or newer.

        A stored tombstone where readers saw nothing is a change with neither `before` nor `after`.
        """
        key = (event.table, event.key)
        current = self.entries.get(key)
        before = None
        if current is not None:
            old = current.event
            if current.withdrawn:
                # The owner's own version at the same time restores a withdrawn entry.
                if (event.lamport, event.owner) < (old.lamport, old.owner):
                    return None
            elif version(event) <= version(old):
                return None
            if current.visible:
                before = old
            self._unlink(key, current)
        entry = Entry(event, now, entry_hash(event))
        self.entries[key] = entry
        self._link(key, entry)
        after = None if event.deleted else event
        return Change(self.network, event.table, event.key, before, after, now, event.deleted)

    def reaped_since(self, event: TableEvent) -> bool:
        """Whether `event` may predate a tombstone of its owner's that we reaped: we hold nothing of
        its key, and the owner's reaped deletes reach its time. Such a copy is a replay or a
        straggler that the delete was meant to supersede."""
        return (event.table, event.key) not in self.entries and event.lamport <= self.reaped.get(event.owner, 0)

    @staticmethod
    def newer_or_same(held: TableEvent, other: TableEvent) -> bool:
        return version(held) >= version(other)

    def withdraw_owner(self, owner: str, now: float) -> list[Change]:
        """Hide every entry of an owner that died or left. Our mark for it stays: we still hold
        all its versions up to there (hidden), and a sync asks only for what is above it
        (`sync_digest(requesting=True)`, `settle`)."""
        if owner not in self._by_owner and owner not in self.reaped:
            # Nothing of it hidden here to ask from a mark for. A mark over reaped deletes stays:
            # it is what lets a peer that missed one drop its stale copy (`delta_for`).
            self.watermarks.pop(owner, None)
        changes = []
        for key, entry in list(self._by_owner.get(owner, {}).items()):
            if entry.withdrawn:
                continue
            self._unlink(key, entry)
            was_visible = entry.visible
            entry.withdrawn = True
            entry.seen_at = now  # reaping counts from the withdrawal
            self._link(key, entry)
            if was_visible:
                changes.append(Change(self.network, key[0], key[1], entry.event, None, now))
        return changes

    def forget_owner(self, owner: str) -> None:
        """A member forgotten by membership (dead for `dead_retention`): nothing of it is left
        here to guard, so its mark and reaped time go too; kept, they grew with every host ever
        decommissioned, in every digest we send."""
        if owner not in self._by_owner:
            self.watermarks.pop(owner, None)
            self.reaped.pop(owner, None)

    def keep_after_leaving(self, owner: str, now: float) -> None:
        """We left the network: every other owner's entries are withdrawn (hidden, and reaped in
        time), every mark but `owner`'s forgotten; `owner`'s entries and every tombstone stay. So,
        coming back, we neither claim our own history without its deletes nor show again an older
        version of anything we saw (a withdrawn entry refuses older copies; the owner's own copy
        restores it)."""
        for other in [o for o in self._by_owner if o != owner]:
            self.withdraw_owner(other, now)
        self.watermarks = {o: m for o, m in self.watermarks.items() if o == owner}

    def reap(self, now: float, ttl: float, wall_ms: int | None = None, floor: float = math.inf) -> int:
        """Forget tombstones and withdrawn entries older than `ttl`; returns how many.

        A tombstone held here at least `floor` is also aged from when its owner deleted (its
        `wall_ms`, against ours, `wall_ms`), so its holders reap it at about the same time: one
        that took it late (by a sync after a restart) would otherwise hold it up to a `ttl`
        longer than the others, and digests would differ all that while with no sync able to
        mend them. The floor is what a wall time cannot take away: a delete stamped long ago (a
        forged one, or a clock far behind) still lives long enough for its owner to answer it,
        and a clock far ahead here still guards against the copies it deleted. A withdrawal is
        ours alone and counts from when we withdrew."""
        ttl_ms = ttl * 1000
        expired = [
            (key, entry)
            for key, entry in self.entries.items()
            if (entry.event.deleted or entry.withdrawn)
            and (
                now - entry.seen_at >= ttl
                or (
                    wall_ms is not None
                    and not entry.withdrawn
                    and now - entry.seen_at >= floor
                    and wall_ms - entry.event.wall_ms >= ttl_ms
                )
            )
        ]
        for key, entry in expired:
            self._unlink(key, entry)
            del self.entries[key]
            owner = entry.event.owner
            if entry.withdrawn:
                self.watermarks.pop(owner, None)  # we no longer hold all its versions up to there
            elif entry.event.deleted:
                self.reaped[owner] = max(self.reaped.get(owner, 0), entry.event.lamport)
        return len(expired)

    # --- delta sync ---------------------------------------------------------------------------

    def sync_digest(self, requesting: bool = False) -> OwnerDigest:
        """Per owner (watermark, hash of the versions we show). For an owner with withdrawn
        entries the mark is 0 when we vouch (we show less than we hold up to it, and a peer must
        not raise its mark on our word), and our mark and the hash of all we hold, hidden too,
        when we ask (`requesting`): we need only what is above, and a peer whose set is ours
        sends nothing of it (the owner itself, answering a return sync, not all of its entries);
        `settle` shows them again."""
        owners = set(self.watermarks) | {o for o, h in self._owner_hash.items() if o in self._by_owner}
        return {
            o: (
                0 if o in self._withdrawn and not requesting else self.watermarks.get(o, 0),
                self._whole_hash(o) if o in self._withdrawn and requesting else self._owner_hash.get(o, 0),
            )
            for o in owners
        }

    def holds_as(self, owner: str, peer: OwnerDigest) -> bool:
        """We hold the same entries of `owner` as a peer with digest `peer`, none withdrawn."""
        return owner not in self._withdrawn and self._owner_hash.get(owner, 0) == peer.get(owner, (0, 0))[1]

    def held_above(
        self, digest: OwnerDigest, limit: int, own: str = "", list_own: bool = False
    ) -> dict[str, frozenset[int]]:
        """The Lamport times of the versions we hold above the marks of `digest` (ours, as sent),
        per owner, at most `limit` in all: they came by the tree, not by sync (marks rise only by
        sync), and a peer need not send them again. Withdrawn versions count: held hidden, they
        are shown again once the peer's set proves them current (`settle`); once a peer's set
        did not, the owner's versions come whole, so a changed one replaces ours. Not for `own`
        (us), unless `list_own`: then every version of ours, below the mark too, listed last, and
        the peer shows us each copy in our name at a time we do not hold (`delta_for`). An owner
        whose times do not fit is left out: the peer sends it all."""
        held: dict[str, frozenset[int]] = {}
        for owner, bucket in self._by_owner.items():
            if owner == own or owner in self._unproven:
                continue
            mark = digest.get(owner, (0, 0))[0]
            times = frozenset(e.event.lamport for e in bucket.values() if e.event.lamport > mark)
            if times and len(times) <= limit:
                held[owner] = times
                limit -= len(times)
        mine = frozenset(e.event.lamport for e in self._by_owner.get(own, {}).values())
        if list_own and own and len(mine) <= limit:
            held[own] = mine
        return held

    def _whole_hash(self, owner: str) -> int:
        """The hash of all we hold of `owner`, what we show and what we hide."""
        whole = self._owner_hash.get(owner, 0)
        for entry in self._by_owner.get(owner, {}).values():
            if entry.withdrawn:
                whole ^= entry.hash
        return whole

    def hash_of(self, owner: str) -> int:
        """The hash of `owner`'s versions we show, as our digest gives it."""
        return self._owner_hash.get(owner, 0)

    def delta_for(
        self,
        peer: OwnerDigest,
        peer_name: str = "",
        held: Mapping[str, Collection[int]] | None = None,
        own: str = "",
    ) -> tuple[list[TableEvent], list[str]]:
        """Entries a peer with digest `peer` lacks, and the owners sent in full. Versions the peer
        says it `held` above its mark are not sent (an owner sent in full goes whole).

        To the owner itself (`peer_name`) we also send what we hold *below* its mark that it does
        not: a former life's entries, deletes whose tombstones never reached us, forgeries; only
        the owner can undo them (it answers with newer versions). No one else is shown them. When
        we claim to be as complete as it is and still differ, all we hold of it (a version forged
        at a time it uses differs only in content); otherwise, if it listed every version it
        holds (`held_above`), those at times it does not hold: a former life's copy that came
        here by rumour after its first sync, below its mark and above ours, differed for ever.

        And ours (`own`) all, to a peer that claims to be as complete for us as we are and still
        differs: it lacks a version below our mark (a tombstone in our name that reached us after
        the peer took our mark), which no other sync would send it."""
        events: list[TableEvent] = []
        full: list[str] = []
        for owner, bucket in self._by_owner.items():
            mark, hashed = peer.get(owner, (0, 0))
            if hashed == self._owner_hash.get(owner, 0):
                continue  # identical sets of this owner's entries: nothing to send
            if mark < self.reaped.get(owner, 0):
                full.append(owner)
                events.extend(e.event for e in bucket.values() if not e.withdrawn)
            elif owner == peer_name and self.watermarks.get(owner, 0) >= mark:
                events.extend(e.event for e in bucket.values() if not e.withdrawn)
            elif owner == peer_name and held and owner in held:
                has = held[owner]
                events.extend(e.event for e in bucket.values() if not e.withdrawn and e.event.lamport not in has)
            elif owner == own and mark >= self.watermarks.get(owner, 0):
                events.extend(e.event for e in bucket.values() if not e.withdrawn)
            else:
                has = held.get(owner, ()) if held else ()
                events.extend(
                    e.event
                    for e in bucket.values()
                    if not e.withdrawn and e.event.lamport > mark and e.event.lamport not in has
                )
        for owner, reaped in self.reaped.items():
            # Nothing of this owner left here, but the peer shows some, and from below deletes we
            # reaped: a copy that missed one for a whole time to live. Sent in full (as empty), it
            # drops what our mark covers; no one else would ever tell it.
            mark, hashed = peer.get(owner, (0, 0))
            if hashed and mark < reaped and owner not in self._by_owner:
                full.append(owner)
        return events, full

    def merge(
        self,
        events: Iterable[TableEvent],
        full_keys: dict[str, set[EntryKey]],
        now: float,
        owner_ok: Callable[[str], bool],
        applied: list[TableEvent] | None = None,
    ) -> list[Change]:
        """Merge one slice of a peer's delta, noting in `full_keys` (owner -> keys, one set per
        owner sent in full) which keys the peer sent, and in `applied` the versions new to us;
        `settle` ends the delta."""
        changes = []
        for event in events:
            if event.owner in full_keys:
                full_keys[event.owner].add((event.table, event.key))
            if not owner_ok(event.owner):
                continue
            change = self.apply(event, now)
            if change is not None:
                if applied is not None:
                    applied.append(event)
                if change.visible:
                    changes.append(change)
        return changes

    def settle(
        self,
        peer: OwnerDigest,
        full_keys: dict[str, set[EntryKey]],
        now: float,
        owner_ok: Callable[[str], bool],
    ) -> list[Change]:
        """After a peer's whole delta is merged: drop what it no longer holds of owners it sent in
        full, then raise our watermarks to the peer's where that is now true."""
        changes = []
        # A full owner's entries the peer no longer has were superseded by tombstones it reaped.
        for owner, keys in full_keys.items():
            if not owner_ok(owner):
                continue  # gone meanwhile (sent with no entries, nothing in the delta said so)
            mark = peer.get(owner, (0, 0))[0]
            for key, entry in list(self._by_owner.get(owner, {}).items()):
                if key not in keys and entry.event.lamport <= mark:
                    self._unlink(key, entry)
                    del self.entries[key]
                    if entry.visible:
                        changes.append(Change(self.network, key[0], key[1], entry.event, None, now, True))
        for owner in [o for o in self._withdrawn if owner_ok(o)]:
            changes += self._settle_withdrawn(owner, peer, now)
        self._unproven.intersection_update(self._withdrawn)
        for owner, (mark, _) in peer.items():
            # Still holding withdrawn entries of this owner means the peer did not send them all
            # back (its set equals our visible part): raising the mark would hide them for good.
            if mark > self.watermarks.get(owner, 0) and owner_ok(owner) and owner not in self._withdrawn:
                self.watermarks[owner] = mark
        return changes

    def _settle_withdrawn(self, owner: str, peer: OwnerDigest, now: float) -> list[Change]:
        """An owner back from the dead, after a peer's delta: when what we show of it and what
        we hide of it is now exactly the set the peer shows (same hash), the hidden versions are
        its current ones and are shown again, not sent again (we asked only for what is above
        our mark and listed the hidden ones as held). When the sets differ (the peer hides some
        too, or lacks a version the owner never wrote, forged in its name, say), our mark for
        it goes and its hidden versions are no longer listed as held: the next sync brings all
        of its versions, and a changed one replaces ours."""
        hidden = [(key, entry) for key, entry in self._by_owner.get(owner, {}).items() if entry.withdrawn]
        if self._whole_hash(owner) != peer.get(owner, (0, 0))[1]:
            self.watermarks.pop(owner, None)
            self._unproven.add(owner)
            return []
        changes = []
        for key, entry in hidden:
            self._unlink(key, entry)
            entry.withdrawn = False
            entry.seen_at = now
            self._link(key, entry)
            if entry.visible:
                changes.append(Change(self.network, key[0], key[1], None, entry.event, now))
        return changes

    def absorb(
        self,
        events: Iterable[TableEvent],
        peer: OwnerDigest,
        full_owners: Iterable[str],
        now: float,
        owner_ok: Callable[[str], bool],
    ) -> list[Change]:
        """Merge a peer's whole delta at once (`merge` then `settle`)."""
        full_keys: dict[str, set[EntryKey]] = {o: set() for o in full_owners}
        return self.merge(events, full_keys, now, owner_ok) + self.settle(peer, full_keys, now, owner_ok)
