"""Node: membership, attachments, tables and broadcast queues composed into one protocol machine.

Inputs: datagrams, stream frames, API calls and `tick(now)`. Outputs, taken by the caller:
datagrams to send (`take_datagrams`), stream requests to open (`take_streams`) and what changed
(`take_changes`). The node never reads a clock, never opens a socket and draws randomness only
from the `random.Random` it is given, so the runtime and the simulator drive the very same code.

Scopes: membership and node<->network attachments travel on the cluster queue to anyone; a
network's table events travel on that network's queue only to members of that network, and a node
drops (and counts) table events of networks it is not in.
"""

from __future__ import annotations

import math
import zlib
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .broadcast import BroadcastQueue
from .clock import LamportClock
from .config import Config
from .errors import LocalProtocolError, OutOfScope, RemoteProtocolError
from .membership import GONE, LIVE, Member, MemberChange, Membership, State
from .rng import Rng
from .table import Change, EntryKey, NetworkTable
from .wire import (
    MAX_ATTACHMENTS,
    MAX_HELD,
    MAX_MEMBERS,
    MAX_STREAM_ITEMS,
    Ack,
    Address,
    Alive,
    Dead,
    Held,
    IndirectPing,
    Leave,
    Message,
    MessageType,
    Nack,
    NetworkDigest,
    NodeNetwork,
    OwnerDigest,
    Ping,
    PushPull,
    StreamAck,
    Suspect,
    SyncPush,
    SyncRequest,
    SyncResponse,
    TableEvent,
    assemble_datagram,
    datagram_header,
    decode_datagram,
    decode_frame,
    encode_frame,
    encode_message,
)

MAX_OUT_OF_SCOPE_NETWORKS = 256
HOT_ROUNDS = 10  # gossip rounds after a table change in which the network's digest is gossiped
# Seconds a sync may go unanswered before another peer is asked (`_start_sync`). Once its request
# is out (connected and written), SYNC_PATIENCE: the peer has it, and TCP resends a lost segment
# itself; asking another meanwhile only adds load. Before, four times the median of our recent
# connects, within MIN_SYNC_PATIENCE and SYNC_PATIENCE: a handshake that long is most likely lost,
# and TCP resends a lost SYN only after a second.
SYNC_PATIENCE = 1.0
MIN_SYNC_PATIENCE = 0.2
CONNECT_SAMPLES = 16
MAX_SYNCS_IN_FLIGHT = 3  # per network, the abandoned ones included
MISMATCH_HOT_LIMIT = 30.0  # seconds a lasting digest difference keeps a network's digests going
# Seconds a tombstone is held here whatever its delete's wall time says (`NetworkTable.reap`):
# long enough for its owner to see one forged in its name, and for a partition of minutes.
REAP_FLOOR = 180.0
MAX_STUCK_DIGESTS = 64  # differing digests remembered per network while ours does not change
LOUD_MISMATCH_ROUNDS = 10  # rounds a digest difference may last while news arrives before a sync
# How far a Lamport time from the wire may be above where our clock started plus CLOCK_RATE per
# second since. Clocks start at wall-clock microseconds (see `Node`) and move by one per write:
# 2**40 us is 12 days of start times apart (plus the cluster's writes), and no cluster writes two
# million entries a second for long. A time beyond this is forged or corrupt; witnessing it
# would push our clock towards 2**63, past which nothing we send can be decoded (moby's NetworkDB
# and memberlist have no such bound).
LAMPORT_WINDOW = 2**40
CLOCK_RATE = 2_000_000
# Membership and attachment news the cluster queue holds.
MAX_CLUSTER_BACKLOG = 4096
# Pings and indirect pings answered per datagram; an honest one carries one.
MAX_PROBES_PER_DATAGRAM = 2
# Senders we never heard of that we exchanged state with lately (see `_ask_unknown`), and how
# far apart two such exchanges are at least: forged senders must not make us open streams en masse.
MAX_UNKNOWN_ASKED = 256
UNKNOWN_PULL_SPACING = 1.0
# Sync responses we owe a push for: at most this many (peer, network) pairs are remembered.
MAX_EXPECTED_PUSHES = 1024
# Entries of received syncs waiting to be merged; a sync beyond this is refused (and retried later).
MAX_ABSORB_BACKLOG = MAX_STREAM_ITEMS


class StaticCluster(Protocol):
    """A fixed, shared view of who is in which network (the simulator's cheap mode for 10,000 nodes)."""

    def network_nodes(self, network: str) -> Sequence[str]:
        """The network's members, in name order (the eager tree is laid over it)."""
        ...

    def address(self, name: str) -> Address: ...


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """Open a stream to `addr`, send `frame`, and hand the reply to `Node.on_stream_reply(id, ...)`."""

    id: int
    addr: Address
    frame: bytes


@dataclass(slots=True)
class _PendingStream:
    kind: str  # "push-pull", "join", "sync", "sync-push"
    peer: str | None
    network: str | None
    deadline: float
    why: str = ""  # what started a sync: join, digest, return, periodic
    seq: int = 0  # a ping's sequence number: only its Ack counts
    sent: bool = False  # connected and the request written (`on_stream_sent`)
    # When its connect began: when it was asked for, or when our own transport took it from its
    # queue (`on_stream_started`); None while it waits there (`on_stream_queued`).
    connecting_since: float | None = None


@dataclass(slots=True)
class _NetworkState:
    table: NetworkTable
    next_sync_at: float
    # Gossip rounds left in which the digest goes out. Counted in rounds, not seconds: a process
    # stalled past a time window (paused, starved of CPU) never announced what it wrote before.
    hot_rounds: int = 0
    # Where the digest goes: a cycle over the network's members, `cycle_stride` apart from a random
    # start, redrawn after `cycle_left` more picks or when the membership's size changes.
    cycle_size: int = 0
    cycle_at: int = 0
    cycle_stride: int = 1
    cycle_left: int = 0
    fresh_at: float = -1e9  # when a version new to us last arrived or was written
    mismatch_rounds: int = 0  # digests that differed from ours while quiet, since one agreed
    mismatch_since: float | None = None  # since when digests differ from ours
    # Differing digests seen while ours stayed `stuck_for`: digest -> when first seen. A pair of
    # tables that neither changes, and that still differ, is what syncs have not mended.
    stuck: dict[int, float] = field(default_factory=dict)
    stuck_for: int = 0
    digest_sync_at: float = -math.inf  # when a differing digest last started a sync
    syncing: int | None = None  # id of the stream of a sync in flight
    abandoned: set[int] = field(default_factory=set)  # syncs given up as slow: the first answer is still taken
    needs_join_sync: bool = True
    # Until one sync of this network has completed in this life, we report watermark 0 for our own
    # entries, so the first peer we sync with sends back every entry it holds in our name: what a
    # former life wrote (journal lost) or what we deleted before a detach must be seen to be undone.
    own_synced: bool = False
    # The last sync's peer showed a set of our own entries unlike ours: our next request lists our
    # versions, so that it sends us the copies in our name we lack (`held_above`).
    own_differs: bool = False
    returned: set[str] = field(default_factory=set)  # members back from the dead, not yet synced with


@dataclass(slots=True)
class _Absorbing:
    """A received sync (our request's response, or a peer's push) being merged a slice at a
    time: a 75,000-entry sync in one callback kept a node from answering probes for seconds, and
    its peers declared it dead (moby#52661 on a 50-host lab)."""

    network: str
    state: _NetworkState  # the attachment it was received in: a detach abandons it
    sender: str
    entries: Sequence[TableEvent]
    digest: OwnerDigest  # the sender's, as sent: what it holds, for the push back
    vouched: OwnerDigest  # the marks of it we may take over (not ours, none beyond our window)
    full_keys: dict[str, set[EntryKey]]  # owners sent in full -> keys seen so far
    queued_at: float
    response_to: _PendingStream | None = None  # None: a push, the second half of a peer's sync
    held: Held = field(default_factory=dict)  # what the sender holds above its marks (a response's)
    received: set[tuple[str, str, int]] = field(default_factory=set)  # (table, key, time) merged
    done: int = 0


class Node:
    def __init__(
        self,
        name: str,
        addr: Address,
        config: Config,
        rng: Rng,
        now: float,
        *,
        lamport: int = 0,
        incarnation: int = 0,
        static: StaticCluster | None = None,
        wall_us: int = 0,
    ) -> None:
        """`lamport`: where the clock starts. Callers start it at least at wall-clock microseconds
        (`wall_us`, now): a new life whose journal was lost cannot know the times its former life
        wrote, and times reused below what peers hold as complete would never be synced to them.
        `wall_us` also anchors the ceiling of Lamport times we accept (`_clock_ceiling`): the same
        for every node of a cluster, whatever clock its journal brought back."""
        self.name = name
        self.addr = addr
        self.config = config
        self.rng = rng
        self.clock = LamportClock(lamport)
        self._clock_start, self._started_at = wall_us, now
        self.static = static
        self.membership = Membership(name, addr, config, rng, now, incarnation)
        # (node, network) -> latest attachment record, and for each network the live members
        # other than us (cached; rebuilt when membership or attachments change).
        self.attachments: dict[tuple[str, str], NodeNetwork] = {}
        self._peers_cache: dict[str, list[str]] = {}
        self._tree_cache: dict[str, tuple[list[str], str]] = {}  # network -> (our children, root)
        self.networks: dict[str, _NetworkState] = {}
        # What does not fit travels by push-pull: forged or storming news must not grow it for ever.
        self.cluster_queue = BroadcastQueue(MAX_CLUSTER_BACKLOG)
        self._header = datagram_header(name)
        self._space = config.packet_size - len(self._header) - 3
        self.next_gossip_at = now + rng.random() * config.gossip_interval
        self.next_push_pull_at = now + config.push_pull_interval * (0.5 + rng.random())
        self.next_reap_at = self._next_reap(now)
        self._datagrams: list[tuple[Address, bytes]] = []
        # Fresh events waiting up to `eager_delay` to be pushed down the eager tree, per
        # destination: [bytes queued, encoded events]; and when the oldest of them is due.
        self._eager: dict[Address, tuple[list[int], list[bytes]]] = {}
        self._eager_due: float | None = None
        self._streams: list[StreamRequest] = []
        self._pending: dict[int, _PendingStream] = {}
        self._connect_times: deque[float] = deque(maxlen=CONNECT_SAMPLES)
        self._connect_patience = SYNC_PATIENCE
        self._stream_ids = 0
        self._changes: list[Change | MemberChange] = []
        self._own_writes: list[TableEvent] = []
        self.stats: dict[str, int] = {}
        self.out_of_scope: dict[str, int] = {}  # network -> dropped, see _out_of_scope
        self.left = False
        # (peer, network) -> deadline: we answered the peer's sync request and accept one push back.
        self._expected_pushes: dict[tuple[str, str], float] = {}
        self.seeds: list[Address] = []
        self._left_tables: dict[str, NetworkTable] = {}  # networks we left: our tombstones there
        self._detached_at: dict[tuple[str, str], float] = {}  # detach records, by when they came
        self._absorbing: deque[_Absorbing] = deque()  # received syncs, merged a slice per tick
        self._unknown_asked: dict[str, float] = {}  # sender -> when we last exchanged state with it
        self._next_unknown_pull_at = 0.0

    # === helpers ===================================================================================

    def count(self, name: str, amount: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + amount

    def _out_of_scope(self, network: str, amount: int = 1) -> None:
        """Something of a network we are not in reached us and was dropped. Counted per network
        too (a bounded map: names come from the wire), so a checker can tell the last rumours
        of a network we just left from a leak of one we were never in."""
        self.count("dropped_out_of_scope", amount)
        if network not in self.out_of_scope and len(self.out_of_scope) >= MAX_OUT_OF_SCOPE_NETWORKS:
            network = "(other)"
        self.out_of_scope[network] = self.out_of_scope.get(network, 0) + amount

    def take_datagrams(self) -> list[tuple[Address, bytes]]:
        out, self._datagrams = self._datagrams, []
        return out

    def take_streams(self) -> list[StreamRequest]:
        out, self._streams = self._streams, []
        return out

    def take_own_writes(self) -> list[TableEvent]:
        """Every version this node wrote in its own name since the last call, the API's and the
        core's own (re-assertions), for the journal."""
        out, self._own_writes = self._own_writes, []
        return out

    def take_changes(self) -> list[Change | MemberChange]:
        out, self._changes = self._changes, []
        return out

    def require_network(self, network: str) -> _NetworkState:
        state = self.networks.get(network)
        if state is None:
            raise LocalProtocolError(f"node {self.name} is not attached to network {network!r}")
        return state

    def address_of(self, name: str) -> Address | None:
        if self.static is not None:
            return self.static.address(name)
        member = self.membership.members.get(name)
        return None if member is None else member.addr

    def peers_in(self, network: str) -> Sequence[str]:
        """Live members of `network` other than us, as far as we know."""
        if self.static is not None:
            return [n for n in self.static.network_nodes(network) if n != self.name]
        cached = self._peers_cache.get(network)
        if cached is None:
            members = self.membership.members
            cached = [
                node
                for (node, net), record in self.attachments.items()
                if net == network
                and record.attached
                and node != self.name
                and node in members
                and members[node].state in LIVE
            ]
            cached.sort()
            self._peers_cache[network] = cached
        return cached

    def _pick(self, candidates: Sequence[str], count: int) -> list[str]:
        if self.static is not None:
            # The shared list contains us: sample one extra and drop ourselves (cheap for 10,000).
            if len(candidates) > 4 * count:
                return [n for n in self.rng.sample(candidates, count + 1) if n != self.name][:count]
            candidates = [n for n in candidates if n != self.name]
        if len(candidates) <= count:
            return list(candidates)
        return self.rng.sample(candidates, count)

    def _random_peers_in(self, network: str, count: int) -> list[str]:
        if self.static is not None:
            return self._pick(self.static.network_nodes(network), count)
        return self._pick(self.peers_in(network), count)

    def _digest_targets(self, network: str, state: _NetworkState, count: int) -> list[str]:
        """The next `count` members of a random cycle over the network, which names each member
        once: any 2n - 1 picks in a row reach all n. Drawn afresh each round, 3 of 7, the one
        reachable peer of a writer on a two-host side of a partition was missed by all ten hot
        rounds 0.4 % of the time, and its repair waited for the periodic digest. A stride
        coprime to n keeps the cycle O(1) in memory for a 10,000-member static view."""
        members = self.static.network_nodes(network) if self.static is not None else self.peers_in(network)
        size = len(members)
        targets: list[str] = []
        for _ in range(min(count, size)):
            if state.cycle_left <= 0 or state.cycle_size != size:
                stride = self.rng.randint(1, max(1, size - 1))
                while math.gcd(stride, size) != 1:
                    stride -= 1
                state.cycle_size, state.cycle_stride, state.cycle_left = size, stride, size
                state.cycle_at = self.rng.randint(0, size - 1)
            state.cycle_at = (state.cycle_at + state.cycle_stride) % size
            state.cycle_left -= 1
            if members[state.cycle_at] != self.name:  # a static view lists us too
                targets.append(members[state.cycle_at])
        return targets

    def owner_ok(self, network: str, owner: str) -> bool:
        """Whether entries of `owner` in `network` may be stored from a peer: not ours (only our own
        writes make those, see `_answer_own`), and the owner not dead, left or detached."""
        if owner == self.name:
            return False
        if self.static is not None:
            return True
        # An owner we do not know alive is not taken in: were it dead already, nothing would ever
        # withdraw its entries. Its entries reach us by sync once its Alive has (digests differ).
        state = self.membership.state_of(owner)
        if state is None or state in GONE:
            return False
        record = self.attachments.get((owner, network))
        return record is None or record.attached

    def _open_stream(
        self,
        kind: str,
        addr: Address,
        message: Message,
        now: float,
        peer: str | None = None,
        network: str | None = None,
        why: str = "",
        seq: int = 0,
    ) -> int:
        self._stream_ids += 1
        sid = self._stream_ids
        self._pending[sid] = _PendingStream(
            kind, peer, network, now + self.config.stream_timeout, why, seq, connecting_since=now
        )
        self._streams.append(StreamRequest(sid, addr, encode_frame(self.name, message)))
        self.count(f"streams_opened_{kind}")
        return sid

    # === API =======================================================================================

    def restore(self, own: Iterable[TableEvent], now: float, wall_ms: int) -> list[TableEvent]:
        """Re-announce entries this node owned before a restart, with fresh Lamport times.

        Deletes are restored too: peers may still hold the live version of an entry we deleted
        just before the crash, and only a newer tombstone removes it.
        """
        written = []
        for event in sorted(own, key=lambda e: e.lamport):
            self.clock.witness(event.lamport)
            if event.network not in self.networks:
                self.attach(event.network, now)
            # A tombstone keeps the time of its delete: reaped when the first one would have been,
            # not a `tombstone_ttl` after each restart.
            wall = event.wall_ms if event.deleted else wall_ms
            written.append(self._write(event.network, event.table, event.key, event.value, event.deleted, now, wall))
        return written

    def attach(self, network: str, now: float) -> None:
        if network in self.networks:
            return
        table = self._left_tables.pop(network, None)
        if table is None:
            table = NetworkTable(network)
        else:  # the tombstones we kept: their owners may have left or died while we were away
            for owner in table.owners():
                if owner != self.name and not self.owner_ok(network, owner):
                    table.withdraw_owner(owner, now)
        state = _NetworkState(table, now + self.config.bulk_sync_interval * (0.5 + self.rng.random()))
        self.networks[network] = state
        self._set_attachment(NodeNetwork(self.name, network, self.clock.tick(), True), now)
        self._join_sync(network, state, now)

    def detach(self, network: str, now: float, wall_ms: int) -> None:
        state = self.require_network(network)
        for entry in list(state.table.visible()):
            if entry.event.owner == self.name:
                self._write(network, entry.event.table, entry.event.key, b"", True, now, wall_ms)
        # Our tombstones are on their way down the tree (the eager outbox outlives the network).
        del self.networks[network]
        state.table.keep_after_leaving(self.name, now)
        self._left_tables[network] = state.table
        self._set_attachment(NodeNetwork(self.name, network, self.clock.tick(), False), now)

    def _set_attachment(self, record: NodeNetwork, now: float) -> None:
        key = (record.node, record.network)
        self.attachments[key] = record
        if record.attached:
            self._detached_at.pop(key, None)
        else:
            self._detached_at[key] = now  # reaped with tombstones: push-pull carries every record
        self._forget_views(record.network)
        self.cluster_queue.put(("attach", record.node, record.network), encode_message(record))

    def write(self, network: str, table: str, key: str, value: bytes, now: float, wall_ms: int) -> TableEvent:
        """Create or update an entry this node owns."""
        self.require_network(network)
        return self._write(network, table, key, value, False, now, wall_ms)

    def delete(self, network: str, table: str, key: str, now: float, wall_ms: int) -> TableEvent:
        state = self.require_network(network)
        entry = state.table.get(table, key)
        if entry is None or not entry.visible:
            raise LocalProtocolError(f"no entry {table}/{key} in network {network!r}")
        return self._write(network, table, key, b"", True, now, wall_ms)

    def _write(
        self, network: str, table: str, key: str, value: bytes, deleted: bool, now: float, wall_ms: int
    ) -> TableEvent:
        state = self.networks[network]
        event = TableEvent(network, table, key, value, self.name, self.clock.tick(), wall_ms, deleted)
        change = state.table.apply(event, now)
        state.table.entries[(table, key)].pushed = True
        state.table.watermarks[self.name] = event.lamport
        self._own_writes.append(event)
        if change is not None and change.visible:
            self._changes.append(change)
        self._spread(state, event, now)
        return event

    def _spread(self, state: _NetworkState, event: TableEvent, now: float, sender: str | None = None) -> None:
        """A version new to us (our write, or first received from `sender`): pushed at once down
        the network's eager tree. What the tree misses (a datagram lost, a member dead or not yet
        known to someone) the digests of the next rounds reveal, and a sync repairs."""
        state.hot_rounds = HOT_ROUNDS
        state.fresh_at = now
        targets = [t for t in self._tree_targets(event.network, event.owner) if t != sender]
        if targets:  # most members are leaves of the tree: nothing to encode
            encoded = encode_message(event)
            for target in targets:
                self._push_eager(target, encoded, now)

    def _tree_targets(self, network: str, owner: str) -> list[str]:
        """Where a fresh event of `owner` goes from us: our children in the network's tree, and,
        for our own writes, its root; never back to the owner."""
        tree = self._tree_cache.get(network)
        if tree is None:
            tree = self._tree_cache[network] = self._tree_place(network)
        children, root = tree
        targets = [c for c in children if c != owner]
        if owner == self.name and root != self.name:
            targets.append(root)
        return targets

    def _tree_place(self, network: str) -> tuple[list[str], str]:
        """Our children in the network's eager tree, and its root.

        The tree is a `tree_fanout`-ary heap over the network's live members in name order,
        rotated to start at a place drawn from the network's name (so one member is not the root
        of every network it is in), which every member computes alike from membership alone: no
        state to build, repair or poison. A writer sends to the root and to its own children; every
        member forwards to its children (not back to the writer). So each member receives each event
        once by the tree, in at most 1 + log_k(n) hops, and every event of a network crosses the
        same few links, which is what batching per destination needs (a tree per writer would
        spread 100 writes/s over every pair of members, one event per datagram)."""
        if self.static is not None:
            members = self.static.network_nodes(network)  # sorted, with us
        else:
            peers = self.peers_in(network)  # sorted, without us
            index = bisect_left(peers, self.name)
            members = [*peers[:index], self.name, *peers[index:]]
        size = len(members)
        root = zlib.crc32(network.encode()) % size  # the tree's place p is members[(p + root) % size]
        place = (bisect_left(members, self.name) - root) % size
        fanout = self.config.tree_fanout
        children = [members[(p + root) % size] for p in range(fanout * place + 1, min(size, fanout * (place + 1) + 1))]
        return children, members[root]

    def _forget_views(self, network: str | None = None) -> None:
        """Membership or attachments changed: peers and trees are computed anew when next needed."""
        if network is None:
            self._peers_cache.clear()
            self._tree_cache.clear()
        else:
            self._peers_cache.pop(network, None)
            self._tree_cache.pop(network, None)

    def _push_eager(self, target: str, encoded: bytes, now: float) -> None:
        addr = self.address_of(target)
        if addr is None:
            return
        size, box = self._eager.setdefault(addr, ([0], []))
        if size[0] + len(encoded) > self._space and box:
            self._emit(addr, box)  # a full datagram goes at once: mass churn is not delayed
            box.clear()
            size[0] = 0
        box.append(encoded)
        size[0] += len(encoded)
        if self._eager_due is None:
            self._eager_due = now + self.config.eager_delay

    def _flush_eager(self) -> None:
        for addr, (_, box) in self._eager.items():
            if box:
                self.count("eager_datagrams")
                self._emit(addr, box)
        self._eager.clear()
        self._eager_due = None

    def join(self, seeds: Iterable[Address], now: float) -> None:
        """Exchange full state with each seed; their answers bring us into the cluster. Seeds
        stay remembered: see `_tick_cluster`."""
        self.seeds = [addr for addr in dict.fromkeys(seeds) if addr != self.addr]
        for addr in self.seeds:
            self._open_stream("join", addr, self._push_pull(join=True), now)

    def leave(self, now: float) -> None:
        """Graceful leave: the Leave message goes out at once to a few members and on the queue."""
        self._flush_eager()  # what waits for our subtree (a detach's tombstones) goes first
        msg = self.membership.leave(now)
        self.left = True
        encoded = [encode_message(msg)]
        peers = list(self.membership.live_peers())
        # Twice the fanout: a leave is said once, so it must not depend on one lost datagram.
        for member in self._pick_members(peers, 2 * self.config.fanout):
            self._datagrams.append((member.addr, assemble_datagram(self._header, encoded)))

    def _pick_members(self, members: list[Member], count: int) -> list[Member]:
        return members if len(members) <= count else self.rng.sample(members, count)

    def _push_pull(self, join: bool) -> PushPull:
        records = list(self.attachments.values())
        if len(records) > MAX_ATTACHMENTS:  # never send what no decoder accepts: attached ones first
            records = sorted(records, key=lambda r: not r.attached)[:MAX_ATTACHMENTS]
        return PushPull(tuple(self.membership.snapshot()[:MAX_MEMBERS]), tuple(records), join)

    # === datagrams =================================================================================

    def handle_datagram(self, addr: Address, data: bytes, now: float) -> None:
        self.count("datagrams_in")
        self.count("bytes_in", len(data))
        try:
            sender, messages = decode_datagram(data)
        except RemoteProtocolError as exc:
            self.count(f"dropped_{exc.reason}")
            return
        if self.left:
            return
        if self.static is None and sender not in self.membership.members and sender != self.name:
            self._ask_unknown(sender, addr, now)
        probes = 0
        for message in messages:
            if isinstance(message, Ping | IndirectPing):
                # Each is answered with a datagram: a datagram full of them must not make us a
                # 4,096-fold amplifier towards a spoofed source.
                probes += 1
                if probes > MAX_PROBES_PER_DATAGRAM:
                    self.count("dropped_probe_flood")
                    continue
            self._handle_message(sender, addr, message, now)
        if self.static is None:
            self.membership.heard_from(sender, now)  # after its messages: a refutation among them counts
        self._drain_membership(now)

    def _ask_unknown(self, sender: str, addr: Address, now: float) -> None:
        """A member we never heard of talks to us: it knows us, we missed its news (we joined
        on the other side of a partition, say, and it never changed since). Exchange state with
        it now, not at the next push-pull, which may be 30 s away; once per sender a
        reconnect_interval, and one such exchange per UNKNOWN_PULL_SPACING at most (the source
        address may be forged: all of a cluster must not be turned on one host)."""
        asked = self._unknown_asked
        if now < self._next_unknown_pull_at or now - asked.get(sender, -1e9) < self.config.reconnect_interval:
            return
        if len(asked) >= MAX_UNKNOWN_ASKED:
            del asked[next(iter(asked))]
        asked.pop(sender, None)
        asked[sender] = now
        self._next_unknown_pull_at = now + UNKNOWN_PULL_SPACING
        self.count("push_pulls_unknown_sender")
        self._open_stream("push-pull", addr, self._push_pull(join=False), now)

    def _handle_message(self, sender: str, addr: Address, msg: Message, now: float) -> None:
        m = self.membership
        if isinstance(msg, TableEvent):
            self._on_table_event(msg, now, sender)
        elif isinstance(msg, NetworkDigest):
            self._on_digest(sender, msg, now)
        elif isinstance(msg, Ping):
            m.on_ping(msg, addr)
        elif isinstance(msg, Ack):
            m.on_ack(msg)
        elif isinstance(msg, IndirectPing):
            m.on_indirect_ping(msg, addr, now)
        elif isinstance(msg, Nack):
            m.on_nack(msg)
        elif isinstance(msg, Alive):
            m.on_alive(msg, now)
        elif isinstance(msg, Suspect):
            m.on_suspect(msg, now, direct=msg.by == sender)
        elif isinstance(msg, Dead):
            m.on_dead(msg, now, direct=msg.by == sender)
        elif isinstance(msg, Leave):
            m.on_leave(msg, now)
        elif isinstance(msg, NodeNetwork):
            self._on_attachment(msg, now)

    def _wall_ms(self, now: float) -> int:
        """Wall-clock milliseconds at `now`, from where our clocks were read together at start."""
        return int(self._clock_start / 1000 + (now - self._started_at) * 1000)

    def _next_reap(self, now: float) -> float:
        """The next reap, at a multiple of the period in wall time: members whose clocks agree reap
        a tombstone in the same pass, so their digests do not differ between their passes."""
        period = min(60.0, self.config.tombstone_ttl)
        wait = period - (self._clock_start / 1e6 + now - self._started_at) % period
        return now + (wait if wait > 0.001 else wait + period)  # float residues: never a pass per 1e-9 s

    def _clock_ceiling(self, now: float) -> float:
        # Anchored at wall time, not at our clock: a clock a forger pushed up and a restart
        # brought back from the journal must not raise the ceiling a window more each time.
        return self._clock_start + (now - self._started_at) * CLOCK_RATE + LAMPORT_WINDOW

    def _clock_ok(self, lamport: int, now: float) -> bool:
        """Whether a Lamport time from the wire is plausible. The ceiling grows with our own time
        (CLOCK_RATE per second since we started, above where our clock started), not with our
        clock: measured from the clock, a forger could step everyone up by the window at a time,
        8,192 steps from 2**63."""
        if lamport <= self._clock_ceiling(now):
            return True
        self.count("dropped_clock_jump")
        return False

    def _answer_own(self, state: _NetworkState, event: TableEvent, now: float) -> None:
        """A peer holds `event` in our name. We are the only writer of our entries, so unless it is
        exactly what we hold (or older), it is a forgery, our former life's, or something we deleted
        and forgot: we never adopt it, we re-assert what we hold (or a tombstone) at a newer time.

        Only our own entry counts as what we hold: another owner's value at the key is never
        written in our name (last writer wins between owners; undoing our stray write deletes the
        key). A tombstone in our name where we hold nothing hides nothing: we keep it as it is
        (digests agree, it is reaped in time) and move our clock past it, rather than answering
        with a tombstone of our own that would start its time to live anew everywhere."""
        held = state.table.get(event.table, event.key)
        if held is not None and state.table.newer_or_same(held.event, event):
            return
        if event.deleted and (held is None or held.event.owner != self.name):
            if held is None and state.table.reaped_since(event):
                # One we reaped, handed back by a member that took it later: taken back, it
                # would live here a time to live more (`NetworkTable.reap` no longer lets it).
                self.count("dropped_reaped")
            elif held is None:
                self.clock.witness(event.lamport)
                state.table.apply(event, now)
                # Ours now: our mark covers it, so peers' marks rise past it and no sync sends it
                # round again after one of us reaped it.
                marks = state.table.watermarks
                marks[self.name] = max(marks.get(self.name, 0), event.lamport)
            return
        self.clock.witness(event.lamport)
        ours = held is not None and held.event.owner == self.name and not held.event.deleted
        value, deleted = (held.event.value, False) if held is not None and ours else (b"", True)
        self.count("own_reasserted")
        # Stamped now: the stale copy's time would age our answer (a tombstone reaped at once).
        self._write(event.network, event.table, event.key, value, deleted, now, self._wall_ms(now))

    def _heed_mark_for_us(self, state: _NetworkState, digest: dict[str, tuple[int, int]], now: float) -> None:
        """A peer's digest says it holds all our writes up to `mark`. If that is past our latest
        write here, a former life of ours (journal lost) wrote up to there: what we wrote since at
        times up to `mark` would never be synced to that peer, which believes itself complete. So
        our clock moves past the mark, and those entries of ours are written again, above it."""
        mark = digest.get(self.name, (0, 0))[0]
        table = state.table
        if mark <= table.watermarks.get(self.name, 0) or not self._clock_ok(mark, now):
            return
        self.clock.witness(mark)
        for entry in [e for e in table.owned_by(self.name) if e.event.lamport <= mark]:
            old = entry.event
            self.count("own_rewritten")
            self._write(old.network, old.table, old.key, old.value, old.deleted, now, old.wall_ms)

    def _on_table_event(self, event: TableEvent, now: float, sender: str) -> None:
        self.count("events_in")
        state = self.networks.get(event.network)
        if state is None:
            self._out_of_scope(event.network)
            return
        if not self._clock_ok(event.lamport, now):
            return
        if event.owner == self.name:
            self._answer_own(state, event, now)
            return
        if not self.owner_ok(event.network, event.owner):
            self.count("dropped_owner_gone")
            return
        if state.table.reaped_since(event):
            self.count("dropped_reaped")
            return
        self.clock.witness(event.lamport)
        change = state.table.apply(event, now)
        entry = state.table.entries[(event.table, event.key)]
        if change is None:
            if entry.event != event:
                self.count("events_stale")
                return
            self.count("events_duplicate")
            if entry.pushed:
                return
            self.count("events_pushed_late")  # we had it by sync; our subtree waits for it
        else:
            self.count("events_new")
            if change.visible:
                self._changes.append(change)
        entry.pushed = True
        self._spread(state, event, now, sender)

    def _on_digest(self, sender: str, msg: NetworkDigest, now: float) -> None:
        state = self.networks.get(msg.network)
        if state is None:
            self._out_of_scope(msg.network)
            return
        if not self.owner_ok(msg.network, sender):
            # Not a live member of the network as far as we know: a sync with it could not
            # start, and its digests must not take the turn of those that can.
            self.count("dropped_digest_stranger")
            return
        table = state.table
        if msg.digest == table.digest:
            state.mismatch_rounds, state.mismatch_since = 0, None
            state.returned.discard(sender)  # a returner whose table equals ours: no sync needed
            return
        # While news still arrives, digests differ by what is in flight, and a sync then would
        # fetch copies the tree is bringing: a difference is acted on at once only when quiet
        # (nothing new here for a gossip interval), or once it has lasted LOUD_MISMATCH_ROUNDS
        # (a datagram of the tree lost while writes go on: repaired in seconds, not at the pause).
        quiet = now - state.fresh_at >= self.config.gossip_interval
        if state.mismatch_since is None:
            state.mismatch_since = now
        # A difference keeps us gossiping our digest, so that it is mended even once no table
        # changes any more (a heal's last sync failed, say): it stops when digests agree, or once
        # this same pair of tables has differed for MISMATCH_HOT_LIMIT, which syncs did not mend
        # (tombstones one side reaped, a clock far off); the periodic digest then brings one sync
        # a bulk_sync_interval. Digests that agree from other members do not restart that age.
        if state.stuck_for != table.digest:
            state.stuck.clear()
            state.stuck_for = table.digest
        if len(state.stuck) < MAX_STUCK_DIGESTS:
            first = state.stuck.setdefault(msg.digest, now)
        else:  # forged digests by the thousand: the unknown count as old, not as news
            first = state.stuck.get(msg.digest, -math.inf)
        if now - first < MISMATCH_HOT_LIMIT:
            state.hot_rounds = HOT_ROUNDS
        state.mismatch_rounds += quiet
        behind = msg.count > table.count + self.config.digest_pull_threshold
        loud_since = max(state.mismatch_since, state.digest_sync_at)  # news in flight: a sync at most this often
        lasting = now - loud_since >= LOUD_MISMATCH_ROUNDS * self.config.gossip_interval
        due = (quiet and (behind or state.mismatch_rounds >= self.config.digest_mismatch_rounds)) or lasting
        if due and state.syncing is None:
            # The difference's age (mismatch_since) is not reset by a sync: one that syncs cannot
            # mend would otherwise start one every few rounds.
            state.mismatch_rounds, state.digest_sync_at = 0, now
            self._start_sync(msg.network, state, sender, now, "digest")

    def _on_attachment(self, msg: NodeNetwork, now: float) -> None:
        key = (msg.node, msg.network)
        current = self.attachments.get(key)
        if current is not None and current.lamport >= msg.lamport:
            return
        if not self._clock_ok(msg.lamport, now):
            return
        if current is None and len(self.attachments) >= MAX_ATTACHMENTS and msg.node not in self.membership.members:
            self.count("dropped_attachment_limit")  # records of nodes no one knows, by the thousand
            return
        self.clock.witness(msg.lamport)
        if msg.node == self.name:
            # A record of ours from before a restart: re-assert what is true now, newer.
            mine = msg.network in self.networks
            self._set_attachment(NodeNetwork(self.name, msg.network, self.clock.tick(), mine), now)
            return
        self._set_attachment(msg, now)
        state = self.networks.get(msg.network)
        if state is not None and not msg.attached:
            self._changes.extend(state.table.withdraw_owner(msg.node, now))

    def _join_sync(self, network: str, state: _NetworkState, now: float) -> None:
        """On joining a network, fetch its whole table from one member at once."""
        peers = self._random_peers_in(network, 1)
        if peers:
            state.needs_join_sync = False
            self._start_sync(network, state, peers[0], now, "join")

    def _drain_membership(self, now: float) -> None:
        """Move membership's outputs on: probes out, broadcasts queued, changes applied."""
        m = self.membership
        if m.implausible:
            self.count("dropped_implausible_incarnation", m.implausible)
            m.implausible = 0
        if m.refused_members:
            self.count("dropped_member_limit", m.refused_members)
            m.refused_members = 0
        # News first, so that what we answer now carries it: an Ack to a suspecter's probe
        # brings it our refutation.
        for msg in m.take_broadcasts():
            self.cluster_queue.put(("member", getattr(msg, "node", "")), encode_message(msg))
        # What goes to one peer goes in one datagram: a buddy Suspect with its Ping, a
        # correction with an Ack.
        by_peer: dict[Address, list[bytes]] = {}
        for addr, msg in m.take_outbox():
            by_peer.setdefault(addr, []).append(encode_message(msg))
        for addr, encoded in by_peer.items():
            self._send_with_piggyback(addr, encoded)
        for addr, ping in m.take_stream_probes():
            self._open_stream("ping", addr, ping, now, ping.target, seq=ping.seq)
        for change in m.take_changes():
            self._on_member_change(change, now)

    def _on_member_change(self, change: MemberChange, now: float) -> None:
        self._changes.append(change)
        self._forget_views()
        name = change.name
        if change.after in GONE:
            # Every network, whether or not its attachment record reached us: entries can arrive
            # (by sync) before the record that says their owner is in the network.
            for state in self.networks.values():
                self._changes.extend(state.table.withdraw_owner(name, now))
        elif change.after == State.ALIVE and change.before in GONE:
            # A member came back (restart or healed partition): fetch its entries at once, or as
            # soon as this network's sync slot is free (a heal brings many back together).
            for network, state in self.networks.items():
                record = self.attachments.get((name, network))
                if record is not None and record.attached:
                    state.returned.add(name)
                    self._start_sync(network, state, name, now, "return")

    def _send_with_piggyback(self, addr: Address, encoded: list[bytes]) -> None:
        """Membership's messages to `addr`, packed greedily into datagrams, the cluster's news in
        what room the last one has left."""
        batch: list[bytes] = []
        size = 0
        for item in encoded:
            if batch and size + len(item) > self._space:
                self._emit(addr, batch)
                batch, size = [], 0
            batch.append(item)
            size += len(item)
        if len(self.cluster_queue) and size < self._space:
            limit = self.config.retransmit_limit(self.membership.alive_count)
            batch += [news for news in self.cluster_queue.take(self._space - size, limit) if news not in batch]
        self._emit(addr, batch)

    def _emit(self, addr: Address, encoded: list[bytes]) -> None:
        data = assemble_datagram(self._header, encoded)
        self.count("datagrams_out")
        self.count("bytes_out", len(data))
        self._datagrams.append((addr, data))

    # === streams ===================================================================================

    def handle_stream(self, data: bytes, now: float) -> bytes:
        """Answer one incoming stream frame; a bad frame gets an empty answer and is counted."""
        try:
            sender, msg = decode_frame(data, self.config.max_frame_bytes, self.networks.__contains__)
        except OutOfScope as exc:
            self._out_of_scope(exc.network)
            if exc.kind != MessageType.SYNC_REQUEST:
                return b""
            return encode_frame(self.name, SyncResponse(exc.network, (), {}, (), False))  # not a member
        except RemoteProtocolError as exc:
            self.count(f"dropped_stream_{exc.reason}")
            return b""
        self.count("streams_in")
        reply: Message
        if isinstance(msg, PushPull):
            self._merge_push_pull(msg, now)
            reply = self._push_pull(join=False)
        elif isinstance(msg, SyncRequest):
            state = self.networks[msg.network]  # decode_frame refused networks we are not in
            self._heed_mark_for_us(state, msg.digest, now)
            events, full = state.table.delta_for(msg.digest, sender, msg.held, self.name)
            self.count("sync_entries_out", len(events))
            digest = self._sync_digest(state)
            held = state.table.held_above(digest, MAX_HELD, self.name)
            reply = SyncResponse(msg.network, tuple(events), digest, tuple(full), True, held)
            self._expect_push(sender, msg.network, now)
        elif isinstance(msg, Ping):
            if msg.target != self.name:
                self.count("dropped_stream_wrong_target")
                return b""
            reply = Ack(msg.seq)
        elif isinstance(msg, SyncPush):
            if self._expected_pushes.pop((sender, msg.network), -1.0) < now:
                # Only the second half of a sync we answered may vouch for entries: an unsolicited
                # push could claim any owner complete and erase what we hold of it.
                self.count("dropped_stream_unsolicited")
                return b""
            if not self._queue_absorb(sender, msg.network, msg.entries, msg.digest, msg.full_owners, now):
                return b""  # too much waiting already: the peer's next sync brings it again
            reply = StreamAck()
        else:
            self.count("dropped_stream_unexpected")
            return b""
        self._drain_membership(now)
        return encode_frame(self.name, reply)

    def _expect_push(self, peer: str, network: str, now: float) -> None:
        pushes = self._expected_pushes
        pushes.pop((peer, network), None)
        if len(pushes) >= MAX_EXPECTED_PUSHES:
            del pushes[next(iter(pushes))]  # the oldest: its sync has most likely timed out
        # The peer absorbs our reply before it pushes: allow it the stream timeout twice.
        pushes[(peer, network)] = now + 2 * self.config.stream_timeout

    def _sync_digest(self, state: _NetworkState, requesting: bool = False) -> dict[str, tuple[int, int]]:
        digest = state.table.sync_digest(requesting)
        if not state.own_synced:
            digest[self.name] = (0, digest.get(self.name, (0, 0))[1])
        return digest

    def on_stream_reply(self, sid: int, data: bytes | None, now: float) -> None:
        """The reply to a stream we opened; None when it failed (refused, timed out, reset)."""
        pending = self._pending.pop(sid, None)
        if pending is None:
            return
        self._finish_stream(sid, pending, data, now)
        self._drain_membership(now)

    def _finish_stream(self, sid: int, pending: _PendingStream, data: bytes | None, now: float) -> None:
        state = self.networks.get(pending.network) if pending.network is not None else None
        # Ours: the answer of the sync in flight of the attachment in force (not of one we left
        # since), or of one given up as slow, if it comes first (`_late_answer_welcome`).
        ours = late = False
        if state is not None and state.syncing == sid:
            state.syncing, ours = None, True
        elif state is not None and sid in state.abandoned:
            state.abandoned.discard(sid)
            ours = late = self._late_answer_welcome(state)
        if data is None:
            self.count(f"streams_failed_{pending.kind}")
            if pending.why == "join" and state is not None and not state.own_synced:
                state.needs_join_sync = True  # try another member on the next tick (none merged yet)
            if state is not None:
                # The returner may still be unreachable (a heal reaches hosts one by one): retry.
                self._return_again(state, pending)
            return
        try:
            _, msg = decode_frame(data, self.config.max_frame_bytes, self.networks.__contains__)
        except RemoteProtocolError as exc:
            self.count(f"dropped_stream_{exc.reason}")
            return
        if isinstance(msg, PushPull) and pending.kind in ("join", "push-pull"):
            self._merge_push_pull(msg, now)
            if pending.kind == "join":
                self.count("joined")
        elif isinstance(msg, SyncResponse) and pending.kind == "sync" and state is not None:
            if msg.network != pending.network:
                self.count("dropped_stream_wrong_network")
                return
            if not ours:
                self.count("dropped_stream_stale")
                self._return_again(state, pending)
                return
            if not msg.member:
                return
            # Refused (backlog full): not retried at once, which would fetch the same delta again
            # while we are busiest; the digests in gossip start another sync once we differ.
            if self._queue_absorb(
                pending.peer or "", msg.network, msg.entries, msg.digest, msg.full_owners, now, pending, msg.held
            ):
                # No other sync of this network until this one is merged. Only the first answer is
                # taken: those given up, and a sync still in flight, would bring the same entries;
                # on a host short of CPU, merging them all cost more than the retries saved
                # (30-host lab: 1.8 copies per event by sync instead of 1.1).
                state.syncing = sid
                state.abandoned.clear()
                if late:
                    self.count("syncs_answered_late")
        elif isinstance(msg, StreamAck) and pending.kind == "sync-push":
            self.count("syncs_completed")
        elif isinstance(msg, Ack) and pending.kind == "ping" and msg.seq == pending.seq:
            self.count("probes_acked_by_stream")
            self.membership.on_ack(msg)
        else:
            self.count("dropped_stream_unexpected")

    def _merge_push_pull(self, msg: PushPull, now: float) -> None:
        self.membership.merge_remote(msg.members, now)
        self._drain_membership(now)
        for record in msg.attachments:
            self._on_attachment(record, now)

    def on_stream_queued(self, sid: int) -> None:
        """A stream we opened waits for a slot of our own transport (a restart that joins many
        networks at once): the peer is not slow, and neither patience nor its timeout runs out
        on it there; given up, it would still be sent, and a whole table built for nothing."""
        pending = self._pending.get(sid)
        if pending is not None and not pending.sent:
            pending.connecting_since = None
            pending.deadline = math.inf

    def on_stream_started(self, sid: int, now: float) -> None:
        """A stream that waited for a slot of our own transport now connects."""
        pending = self._pending.get(sid)
        if pending is not None and pending.connecting_since is None:
            pending.connecting_since = now
            pending.deadline = now + self.config.stream_timeout

    def on_stream_sent(self, sid: int, now: float) -> None:
        """A stream we opened is connected and its request written: the peer has it."""
        pending = self._pending.get(sid)
        if pending is None or pending.sent:
            return
        pending.sent = True
        if pending.connecting_since is None:  # a transport that did not say it started
            return
        took = now - pending.connecting_since
        times = self._connect_times
        times.append(took)
        # The median, not a mean: under 10 % loss one handshake in ten takes a second more,
        # and those are what patience is to cut short, not to wait for.
        median = sorted(times)[len(times) // 2]
        self._connect_patience = min(SYNC_PATIENCE, max(MIN_SYNC_PATIENCE, 4 * median))

    def _late_answer_welcome(self, state: _NetworkState) -> bool:
        """Whether the answer to a sync we gave up as slow is merged after all: it is what we
        asked for (a TCP timeout held it up), and no answer of those we asked since is in (none
        is being merged). Dropped, a heal under loss waited for the last retry's answer; so did
        a join for its replacement's whole table, which this answer makes stale."""
        return state.syncing is None or state.syncing in self._pending

    def _return_again(self, state: _NetworkState, pending: _PendingStream) -> None:
        """A sync with a returner brought nothing here (it failed, or its answer came second):
        the returner is synced with again."""
        if pending.why == "return" and pending.peer is not None and self.membership.state_of(pending.peer) in LIVE:
            state.returned.add(pending.peer)

    def _sync_patience_ends(self, network: str, state: _NetworkState) -> float:
        """When the network's sync in flight, unanswered, stops blocking another (see below)."""
        pending = None if state.syncing is None else self._pending.get(state.syncing)
        # None, being merged, or a whole table being answered (a join's request that is out; one
        # whose handshake is lost is asked of another member, as a join again).
        if pending is None or (pending.why == "join" and pending.sent):
            return math.inf
        in_flight = sum(1 for p in self._pending.values() if p.kind == "sync" and p.network == network)
        if in_flight >= MAX_SYNCS_IN_FLIGHT or pending.connecting_since is None:
            return math.inf
        patience = SYNC_PATIENCE if pending.sent else self._connect_patience
        return pending.connecting_since + patience

    def _start_sync(self, network: str, state: _NetworkState, peer: str, now: float, why: str) -> None:
        if state.syncing is not None:
            # One sync of a network at a time, but not one stuck behind a lost handshake (TCP
            # retries a SYN after 1, 2, 4, 8 s: under 10 % loss one sync in a thousand waited
            # 15 s, and the network's repair with it). Unanswered after our patience (see
            # SYNC_PATIENCE), another peer is asked; whichever answer comes first is merged
            # (`_late_answer_welcome`). At most MAX_SYNCS_IN_FLIGHT are left so, and a join's
            # whole table is waited for once its request is out.
            if now < self._sync_patience_ends(network, state):
                return
            self.count("syncs_abandoned_slow")
            if self._pending[state.syncing].why == "join":
                why = "join"  # it asks what the join asked, a whole table, and is waited for so
            state.abandoned.add(state.syncing)
            state.syncing = None
        state.returned.discard(peer)
        addr = self.address_of(peer)
        if addr is None:
            return
        digest = self._sync_digest(state, requesting=True)
        held = state.table.held_above(digest, MAX_HELD, self.name, list_own=state.own_differs)
        request = SyncRequest(network, digest, held)
        state.syncing = self._open_stream("sync", addr, request, now, peer, network, why)
        self.count(f"syncs_{why}")

    def _queue_absorb(
        self,
        sender: str,
        network: str,
        entries: Sequence[TableEvent],
        digest: OwnerDigest,
        full: Sequence[str],
        now: float,
        response_to: _PendingStream | None = None,
        held: Held | None = None,
    ) -> bool:
        """Queue a received sync to be merged slice by slice (`_absorb_slice`); False if refused."""
        state = self.networks.get(network)
        if state is None:
            self._out_of_scope(network, max(1, len(entries)))
            return False
        if sum(len(job.entries) - job.done for job in self._absorbing) + len(entries) > MAX_ABSORB_BACKLOG:
            self.count("syncs_refused_backlog")
            return False
        self.count("sync_entries_in", len(entries))
        if response_to is not None:
            state.own_differs = digest.get(self.name, (0, 0))[1] != state.table.hash_of(self.name)
        self._heed_mark_for_us(state, digest, now)
        # A mark beyond our clock's window vouches for writes that cannot have happened; and no
        # peer vouches for our own entries.
        ceiling = self._clock_ceiling(now)
        vouched = {o: v for o, v in digest.items() if v[0] <= ceiling and o != self.name}
        full_keys: dict[str, set[EntryKey]] = {o: set() for o in full if o in vouched}
        job = _Absorbing(network, state, sender, entries, digest, vouched, full_keys, now, response_to, held or {})
        self._absorbing.append(job)
        return True

    def _absorb_slice(self, now: float) -> None:
        """Merge the next `sync_slice_entries` entries of the oldest received sync; after its last,
        settle it (marks, full owners) and, for our own sync, push back what the peer lacks."""
        job = self._absorbing[0]
        state = job.state
        if self.networks.get(job.network) is not state:
            self._absorbing.popleft()  # we left the network (and maybe came back) meanwhile
            self.count("syncs_abandoned")
            return
        end = min(job.done + self.config.sync_slice_entries, len(job.entries))
        try:
            events = job.entries[job.done : end]
        except RemoteProtocolError as exc:
            self._absorbing.popleft()  # what was merged stays: each entry was valid on its own
            self.count(f"dropped_stream_{exc.reason}")
            if job.response_to is not None:
                state.syncing = None
            return
        job.done = end
        theirs = []
        for event in events:
            if not self._clock_ok(event.lamport, now):
                continue
            if event.owner == self.name:
                self._answer_own(state, event, now)
            elif event.deleted and state.table.reaped_since(event):
                # A tombstone we reaped hides nothing here; taken back, it would go round between
                # peers whose reaping differs in phase for as long as no mark covers it.
                self.count("dropped_reaped")
            else:
                self.clock.witness(event.lamport)
                theirs.append(event)
            if job.response_to is not None:
                job.received.add((event.table, event.key, event.lamport))
        owner_ok = self._owner_ok_in(job.network)
        for owner in {e.owner for e in theirs if not owner_ok(e.owner)}:
            # Skipped now: whatever this owner's state by the last slice, the sync no longer
            # shows we hold all it vouched for (a false death mid-merge, refuted before the end,
            # would otherwise raise our mark over entries we never took).
            job.vouched.pop(owner, None)
            job.full_keys.pop(owner, None)
        # A digest's sync repairs what the tree missed, and a datagram of the tree lost here was
        # lost to our whole subtree: what is new to us goes on down it (children only).
        repairing = job.response_to is not None and job.response_to.why in ("digest", "retry")
        applied: list[TableEvent] | None = [] if repairing else None
        changes = state.table.merge(theirs, job.full_keys, now, owner_ok, applied)
        if job.response_to is not None and job.response_to.why == "join":
            self._age_joined_tombstones(state, theirs, now)
        for event in applied or ():
            state.table.entries[(event.table, event.key)].pushed = True
            encoded = encode_message(event)
            for target in self._tree_targets(event.network, event.owner):
                self._push_eager(target, encoded, now)
        if end == len(job.entries):
            self._absorbing.popleft()
            changes += state.table.settle(job.vouched, job.full_keys, now, owner_ok)
            if job.response_to is not None:
                state.syncing = None
                self._sync_merged(job, now)
            elif self.owner_ok(job.network, job.sender):
                # A returner synced with us and pushed what we lacked: our sync with it is done.
                state.returned.discard(job.sender)
        self._changes.extend(changes)
        if changes:
            state.hot_rounds = HOT_ROUNDS

    def _age_joined_tombstones(self, state: _NetworkState, events: list[TableEvent], now: float) -> None:
        """Tombstones a join sync brought have been held by the peer since their delete: they
        need no REAP_FLOOR here (its owner had its time to answer them there), and are reaped
        by their delete's wall time with everyone else's. Held the floor anew, a tombstone in
        its last minutes went on from one restarted agent to the next (rolling restarts), and
        digests differed all that while. Aged by the floor, a tombstone's own time to live here
        is cut by as much, so not with a TTL under twice the floor (then the floor is the TTL)."""
        floor = REAP_FLOOR
        if self.config.tombstone_ttl < 2 * floor:
            return
        for event in events:
            entry = state.table.entries.get((event.table, event.key)) if event.deleted else None
            if entry is not None and entry.event == event:
                entry.seen_at = min(entry.seen_at, now - floor)

    def _owner_ok_in(self, network: str) -> Callable[[str], bool]:
        return lambda owner: self.owner_ok(network, owner)

    def _sync_merged(self, job: _Absorbing, now: float) -> None:
        """Our sync's response is merged: push back what the peer lacks."""
        state, peer = job.state, job.sender
        state.own_synced = True
        state.needs_join_sync = False  # the table is in: a join given up as slow may fail still
        if job.response_to is not None and job.response_to.why == "return":
            # One returner's table holds what its side has (a heal brings a whole side back):
            # syncing with each of them again would mostly fetch the same entries. A returner
            # whose entries we now hold exactly as this peer does is not synced with again.
            state.returned = {r for r in state.returned if not state.table.holds_as(r, job.digest)}
        events, full = state.table.delta_for(job.digest, peer, job.held, self.name)
        # What the peer just sent us it has; but a full owner's set must go whole, or the peer
        # would take the missing ones for reaped deletes and drop its own copies.
        in_full = set(full)
        events = [e for e in events if e.owner in in_full or (e.table, e.key, e.lamport) not in job.received]
        # The returner saw us come back as we saw it, and syncs with one of our side itself:
        # pushed back as well, every host got the other side's writes twice. One that does not
        # (our death was news only here, or its sync failed) hears our digest, which differs from
        # its own, and that starts a sync: gossiped while this network is hot, which a return
        # that brought us nothing new would not make it (review: 23 s, the periodic digest).
        returning = job.response_to is not None and job.response_to.why == "return"
        addr = None if returning else self.address_of(peer)
        digest = self._sync_digest(state)
        if returning and digest != job.digest:
            state.hot_rounds = HOT_ROUNDS
        if addr is not None and (events or full or digest != job.digest):
            self.count("sync_entries_out", len(events))
            push = SyncPush(job.network, tuple(events), digest, tuple(full))
            self._open_stream("sync-push", addr, push, now, peer, None)
        else:
            self.count("syncs_completed")

    # === time ======================================================================================

    def next_deadline(self) -> float:
        times = [self.next_reap_at]
        # No gossip round is due while there is nothing to gossip: an idle agent wakes for its
        # probes, not five times a second. News queued later is sent at the next tick.
        if len(self.cluster_queue) or any(s.hot_rounds for s in self.networks.values()):
            times.append(self.next_gossip_at)
        if self._eager_due is not None:
            times.append(self._eager_due)
        if self.static is None:
            times += [self.membership.next_deadline(), self.next_push_pull_at]
        times.extend(s.next_sync_at for s in self.networks.values())
        times.extend(self._sync_patience_ends(n, s) for n, s in self.networks.items() if s.syncing is not None)
        if self._pending:
            times.append(min(p.deadline for p in self._pending.values()))
        if any(self._sync_to_start(n, s) for n, s in self.networks.items()):
            times.append(self.next_gossip_at)  # at the next round, not at the next probe
        if self._absorbing:
            times.append(self._absorbing[0].queued_at)  # due at once: a slice per tick
        return min(times)

    def _sync_to_start(self, network: str, state: _NetworkState) -> bool:
        """A join or a return sync waits for the network's sync slot, which is free (one that
        failed is asked again, of another member or of the returner), and someone can answer."""
        if state.syncing is not None:
            return False
        if state.returned:
            return True
        if not state.needs_join_sync:
            return False
        return bool(self.peers_in(network))

    @property
    def busy(self) -> bool:
        """Received syncs are waiting to be merged: the next tick merges a slice of them."""
        return bool(self._absorbing)

    def tick(self, now: float) -> None:
        if self.left:
            return
        if self._absorbing:
            self._absorb_slice(now)
        if self._eager_due is not None and now >= self._eager_due:
            self._flush_eager()
        if self.static is None:
            self._tick_cluster(now)
        if now >= self.next_gossip_at:
            self.next_gossip_at = now + self.config.gossip_interval
            self._gossip_round(now)
        for network, state in self.networks.items():
            if state.needs_join_sync and state.syncing is None:
                self._join_sync(network, state, now)
            if state.returned and state.syncing is None:
                self._start_sync(network, state, min(state.returned), now, "return")
            if state.syncing is not None and now >= self._sync_patience_ends(network, state):
                peers = self._random_peers_in(network, 1)
                if peers:
                    self._start_sync(network, state, peers[0], now, "retry")
                else:  # no one left to ask: stop waiting (its answer is still taken if it comes)
                    state.abandoned.add(state.syncing)
                    state.syncing = None
            if now >= state.next_sync_at:
                state.next_sync_at = now + self.config.bulk_sync_interval
                peers = self._random_peers_in(network, 1)
                if peers and not state.own_synced:
                    self._start_sync(network, state, peers[0], now, "periodic")
                elif peers:
                    # The periodic check is our digest, in one datagram: a peer that differs
                    # gossips its own back and one of us syncs (`_on_digest`). A bulk sync with
                    # a peer that agrees was two streams for nothing, and most of an idle
                    # agent's CPU.
                    addr = self.address_of(peers[0])
                    if addr is not None:
                        self._emit(
                            addr, [encode_message(NetworkDigest(network, state.table.digest, state.table.count))]
                        )
        for sid, pending in list(self._pending.items()):
            if now >= pending.deadline:
                del self._pending[sid]
                self._finish_stream(sid, pending, None, now)
        if now >= self.next_reap_at:
            self.next_reap_at = self._next_reap(now)
            wall_ms, ttl = self._wall_ms(now), self.config.tombstone_ttl
            floor = min(ttl, REAP_FLOOR)
            for state in self.networks.values():
                self.count("reaped", state.table.reap(now, ttl, wall_ms, floor))
            for key in [k for k, at in self._detached_at.items() if now - at >= self.config.tombstone_ttl]:
                del self._detached_at[key]
                del self.attachments[key]
            for network, table in list(self._left_tables.items()):
                table.reap(now, ttl, wall_ms, floor)
                if not table.entries:
                    del self._left_tables[network]

    def _tick_cluster(self, now: float) -> None:
        m = self.membership
        m.tick(now)
        targets = m.reconnect_targets(now)
        if m.forgotten:
            gone = set(m.forgotten)
            m.forgotten.clear()
            for key in [k for k in self.attachments if k[0] in gone]:
                del self.attachments[key]
                self._detached_at.pop(key, None)
            for table in [s.table for s in self.networks.values()] + list(self._left_tables.values()):
                for name in gone:
                    table.forget_owner(name)
            self._forget_views()
        for target in targets:
            self._open_stream("push-pull", target.addr, self._push_pull(join=False), now, target.name)
        if now >= self.next_push_pull_at:
            self.next_push_pull_at = now + self.config.push_pull_interval
            peers = list(m.live_peers())
            if peers:
                peer = self.rng.choice(peers)
                self._open_stream("push-pull", peer.addr, self._push_pull(join=False), now, peer.name)
            # Nodes that joined only each other during a partition form an island no failure
            # detector ever points at: a seed we do not know alive is asked again every round.
            known = {p.addr for p in peers}
            for addr in self.seeds:
                if addr not in known:
                    self._open_stream("push-pull", addr, self._push_pull(join=False), now)
        self._drain_membership(now)

    def _gossip_round(self, now: float) -> None:
        if self.static is None and len(self.cluster_queue):
            peers = list(self.membership.live_peers())
            limit = self.config.retransmit_limit(self.membership.alive_count)
            for member in self._pick_members(peers, self.config.fanout):
                encoded = self.cluster_queue.take(self._space, limit)
                if encoded:
                    self._emit(member.addr, encoded)
        for network, state in self.networks.items():
            self._gossip_network(network, state, now)

    def _gossip_network(self, network: str, state: _NetworkState, now: float) -> None:
        """For HOT_ROUNDS after a change, the network's digest to `fanout` members: the lazy half
        of the eager tree (Plumtree's IHAVE, for a whole table at once). A member that missed an
        event by the tree finds its digest differs and pulls what it lacks by sync."""
        if not state.hot_rounds:
            return
        state.hot_rounds -= 1
        digest = [encode_message(NetworkDigest(network, state.table.digest, state.table.count))]
        for target in self._digest_targets(network, state, self.config.fanout):
            addr = self.address_of(target)
            if addr is not None:
                self._emit(addr, digest)
