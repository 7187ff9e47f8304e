"""Deterministic simulator: many protocol cores, one event queue, virtual time, a faulty network.

Events are ordered by (virtual time, sequence number); all randomness comes from one seeded RNG, so
a seed and a commit replay a run bit for bit (the trace hash proves it). The same `Node` code runs
here as in the daemon: the simulator only delivers its datagrams and streams, with latency, loss,
duplication, partitions and crashes, and plays the workload against it.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any

from ..core.config import Config, profile
from ..core.errors import LocalProtocolError
from ..core.membership import GONE, Member, State
from ..core.node import LAMPORT_WINDOW, Node
from ..core.table import Change
from ..core.wire import (
    MAX_INT,
    Address,
    Message,
    NodeNetwork,
    Suspect,
    SyncPush,
    TableEvent,
    encode_datagram,
    encode_frame,
)
from .checker import GroundTruth, Observer, Violation, compare, percentile
from .options import OptionError, PartitionSpec, SimOptions
from .partitions import partition
from .schedule import TABLE, Schedule, Step

PORT = 7946
TICK, DATAGRAM, STREAM_REQUEST, STREAM_REPLY, CALL, STREAM_SENT = range(6)
Blocker = Callable[[str, str], bool]
SLICE_TIME = 0.002  # virtual seconds a node spends merging one slice of a received sync
CAPTURED = 2000  # datagrams kept (a uniform sample of all delivered) for replay faults


class StaticView:
    """The simulator's shared, fixed cluster view (membership='static')."""

    def __init__(self, members: dict[str, tuple[str, ...]], addresses: dict[str, Address]) -> None:
        self._members = {net: sorted(names) for net, names in members.items()}  # sorted: see StaticCluster
        self._addresses = addresses

    def network_nodes(self, network: str) -> list[str]:
        return self._members.get(network, [])

    def address(self, name: str) -> Address:
        return self._addresses[name]


@dataclass(slots=True)
class _Journal:
    """What a node's sqlite journal holds, as the daemon keeps it: its own entries as written through
    the API (a detach removes that network's), the networks attached through the API, the highest
    Lamport time written and the incarnation."""

    entries: dict[tuple[str, str, str], TableEvent] = field(default_factory=dict)
    networks: set[str] = field(default_factory=set)
    lamport: int = 0
    incarnation: int = -1  # the next life starts one above: 0 for a first start

    def record(self, event: TableEvent) -> None:
        self.entries[(event.network, event.table, event.key)] = event
        self.lamport = max(self.lamport, event.lamport)

    def detached(self, network: str) -> None:
        self.networks.discard(network)
        for key in [k for k in self.entries if k[0] == network]:
            del self.entries[key]

    def load(self, wall: float, tombstone_ttl: float) -> list[TableEvent]:
        """Own entries to restore; tombstones older than the TTL are dropped (Journal.load)."""
        return [e for e in self.entries.values() if not (e.deleted and e.wall_ms < (wall - tombstone_ttl) * 1000)]


def liveness_bound(config: Config, nodes: int) -> float:
    """Seconds after the quiet point within which a correct protocol converges, from its config:
    suspicions still open time out, dead members are reached again by reconnects, push-pull
    exchanges membership, and two periodic syncs repair whatever rumours missed."""
    _, suspicion = config.suspicion_timeouts(nodes)
    return (
        suspicion
        + 4 * config.reconnect_interval
        + config.push_pull_interval
        + 2 * config.bulk_sync_interval
        + config.stream_timeout
    )


class Simulator:
    def __init__(self, options: SimOptions, schedule: Schedule | None = None) -> None:
        self.options = options
        self.schedule = schedule
        try:
            self.config = profile(options.profile).with_overrides(dict(options.overrides))
        except ValueError as exc:
            raise OptionError(str(exc)) from None
        if options.membership == "static" and (options.crashes or schedule is not None):
            raise OptionError("crashes need membership=swim: a static view never detects them")
        self.rng = random.Random(options.seed)
        self.net_rng = random.Random(self.rng.getrandbits(64))
        self.names = options.node_names()
        self.members = options.network_members()
        # Addresses in the lab's range, one per node, as the wire accepts only IP literals.
        self.addresses: dict[str, Address] = {
            n: (f"198.18.{i >> 8}.{i & 255}", PORT) for i, n in enumerate(self.names, start=1)
        }
        self.by_address = {a: n for n, a in self.addresses.items()}
        self.static = StaticView(self.members, self.addresses) if options.membership == "static" else None
        self.networks_of: dict[str, list[str]] = {n: [] for n in self.names}  # the configured networks
        for network, names in self.members.items():
            for name in names:
                self.networks_of[name].append(network)
        self.nodes: dict[str, Node] = {}
        self.retired_stats: list[dict[str, int]] = []  # counters of node lives that ended
        self.crashed: set[str] = set()  # not running: crashed, left, or not started yet
        self.paused: dict[str, list[tuple[Any, ...]]] = {}  # paused node -> inputs waiting for it
        self.journals: dict[str, _Journal] = {n: _Journal() for n in self.names}
        self.attached: dict[str, set[str]] = {n: set() for n in self.names}  # running nodes' networks
        self.attachment_churn = False  # an attach or detach happened: out-of-scope drops are expected
        self.heap: list[tuple[Any, ...]] = []
        self.seq = 0
        self.now = 0.0
        self.tick_at: dict[str, float] = {}
        self.blockers: list[Blocker] = []
        self.link_faults: dict[int, Step] = {}  # loss, duplicate, corrupt and delay windows in force
        self.captured: list[tuple[str, Address, bytes]] = []
        self.captured_seen = 0
        self.truth = GroundTruth()
        self.observer = Observer(self.truth, dict(options.clock_skew))
        self.trace = blake2b(digest_size=16)
        self.delivered = 0
        self.dropped = {"loss": 0, "partition": 0, "crashed": 0}
        self.corrupted = 0
        self.replayed = 0
        self.forged = 0
        self.failed_writes = 0
        self.settle_at = 0.0  # after this no more writes or faults are scheduled
        self.converged_at: float | None = None
        self.network_converged_at: dict[str, float] = {}
        self._converged_digest: dict[str, int] = {}
        self.membership_converged_at: float | None = None
        self.liveness: Violation | None = None
        # A generated run goes on after converging, until tombstones seen by then are reaped
        # everywhere: what reaping, late re-assertions or stragglers do must show too.
        ttl = self.config.tombstone_ttl
        self.hold = min(90.0, ttl + min(60.0, ttl)) if schedule is not None else 0.0
        self._fault_log: list[dict[str, Any]] = []

    @classmethod
    def from_schedule(cls, schedule: Schedule) -> Simulator:
        """A simulator that replays a generated schedule (see `schedule.generate`)."""
        options = SimOptions(
            seed=schedule.seed,
            nodes=len(schedule.nodes),
            networks=dict(schedule.networks),
            overrides=dict(schedule.overrides),
            latency_min=schedule.latency[0],
            latency_max=schedule.latency[1],
            clock_skew=dict(schedule.clock_skew),
        )
        if options.node_names() != list(schedule.nodes):
            raise OptionError("schedule nodes must be named as the simulator names them (n1, n2, ... or n01, ...)")
        return cls(options, schedule)

    # === scheduling ===============================================================================

    def _push(self, at: float, kind: int, *args: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, *args))

    def call_at(self, at: float, fn: Callable[[], None]) -> None:
        self._push(at, CALL, fn)

    def _schedule_tick(self, name: str) -> None:
        node = self.nodes[name]
        at = max(node.next_deadline(), self.now)
        if node.busy:
            at = max(at, self.now + SLICE_TIME)  # merging a slice of a sync takes time, as it does for real
        if at < self.tick_at.get(name, math.inf):  # an earlier tick supersedes the queued one
            self.tick_at[name] = at
            self._push(at, TICK, name)

    # === network ==================================================================================

    def _blocked(self, src: str, dst: str) -> bool:
        return any(b(src, dst) for b in self.blockers)

    def _link(self) -> tuple[float, float, float, float, float]:
        """(loss, duplicate, corrupt, latency low, latency high) with the fault windows in force."""
        keep, single, intact = 1 - self.options.loss, 1 - self.options.duplicate, 1.0
        low, high = self.options.latency_min, self.options.latency_max
        for step in self.link_faults.values():
            if step.kind == "loss":
                keep *= 1 - step.probability
            elif step.kind == "duplicate":
                single *= 1 - step.probability
            elif step.kind == "corrupt":
                intact *= 1 - step.probability
            else:
                low, high = max(low, step.low), max(high, step.high)
        return 1 - keep, 1 - single, 1 - intact, low, high

    def _retransmissions(self) -> tuple[float, float]:
        """What a lossy link costs a stream one way, (handshake, data): TCP resends a lost segment
        after a timeout that doubles each time: 1 s for the handshake's, 200 ms (Linux's least)
        for data. Nothing is lost but time."""
        loss = self._link()[0]
        delays = [0.0, 0.0]
        for i, timeout in enumerate((1.0, 0.2) if loss else ()):
            while self.net_rng.random() < loss and timeout <= 8.0:
                delays[i] += timeout
                timeout *= 2
        return delays[0], delays[1]

    def _corrupt(self, data: bytes) -> bytes:
        """Damage a datagram as a bad link or middlebox might: cut short, padded, or its envelope hit."""
        how = self.net_rng.randrange(3)
        if how == 0:
            return data[: self.net_rng.randrange(len(data))]
        if how == 1:
            return data + self.net_rng.randbytes(self.net_rng.randint(1, 16))
        spot = self.net_rng.randrange(min(len(data), 8))
        return data[:spot] + bytes([data[spot] ^ (1 << self.net_rng.randrange(8))]) + data[spot + 1 :]

    def _flush(self, name: str) -> None:
        node = self.nodes[name]
        datagrams = node.take_datagrams()
        if datagrams:
            loss, duplicate, corrupt, low, high = self._link()
        for addr, data in datagrams:
            dst = self.by_address.get(addr)
            if dst is None:
                continue
            if self._blocked(name, dst):
                self.dropped["partition"] += 1
                continue
            if self.net_rng.random() < loss:
                self.dropped["loss"] += 1
                continue
            if corrupt and self.net_rng.random() < corrupt:
                self.corrupted += 1
                data = self._corrupt(data)
            copies = 2 if self.net_rng.random() < duplicate else 1
            for _ in range(copies):
                self._push(self.now + self.net_rng.uniform(low, high), DATAGRAM, dst, node.addr, data)
        for request in node.take_streams():
            dst = self.by_address.get(request.addr)
            if dst is None or dst in self.crashed or self._blocked(name, dst) or self._blocked(dst, name):
                self._push(self.now + self.options.connect_timeout, STREAM_REPLY, name, request.id, None, node)
                continue
            latency = self.net_rng.uniform(self.options.latency_min, self.options.latency_max)
            handshake, data = self._retransmissions()
            self._push(self.now + latency + handshake, STREAM_SENT, name, request.id, node)  # connected, written
            delay = latency + handshake + data + len(request.frame) / self.options.bandwidth
            self._push(self.now + delay, STREAM_REQUEST, dst, name, request.id, request.frame, node)
        journal = self.journals[name]
        for event in node.take_own_writes():  # as the daemon journals them
            if event.network in node.networks:
                journal.record(event)
        attached = self.attached[name]
        for change in node.take_changes():
            if isinstance(change, Change):
                self.observer.on_change(name, change, change.network in attached)
        self._schedule_tick(name)

    def _capture(self, dst: str, src_addr: Address, data: bytes) -> None:
        """Keep a uniform sample of every datagram delivered (reservoir sampling), old ones included."""
        self.captured_seen += 1
        if len(self.captured) < CAPTURED:
            self.captured.append((dst, src_addr, data))
        else:
            slot = self.net_rng.randrange(self.captured_seen)
            if slot < CAPTURED:
                self.captured[slot] = (dst, src_addr, data)

    # === setup ====================================================================================

    def _wall(self, name: str) -> float:
        """Seconds on `name`'s wall clock, ahead of virtual time by its skew."""
        return self.now + self.options.clock_skew.get(name, 0.0)

    def _new_node(self, name: str, journal: _Journal | None = None) -> Node:
        rng = random.Random(self.rng.getrandbits(64))
        # A node starts a new life one incarnation above its journal's, and its clock at least at
        # wall-clock microseconds, as the daemon does (warm-started nodes began long ago, at 0).
        lamport, incarnation = (
            (max(journal.lamport, int(self._wall(name) * 1e6)), journal.incarnation + 1) if journal else (0, 0)
        )
        node = Node(
            name,
            self.addresses[name],
            self.config,
            rng,
            self.now,
            lamport=lamport,
            incarnation=incarnation,
            static=self.static,
            wall_us=int(self._wall(name) * 1e6),
        )
        self.nodes[name] = node
        return node

    def _warm_start(self, names: list[str]) -> None:
        """These nodes start as if the cluster had formed long ago: all alive, all attachments known.

        Join storms are what cold starts (generated schedules) are for; fixed experiments measure
        what happens to a running cluster.
        """
        warm = set(names)
        records = {
            (name, net): NodeNetwork(name, net, 1, True)
            for net, members in self.members.items()
            for name in members
            if name in warm
        }
        for name in names:
            node = self._new_node(name)
            for network in self.networks_of[name]:
                node.attach(network, 0.0)
                self.attached[name].add(network)
            node.clock.witness(1)
            if self.static is None:
                m = node.membership
                for other in names:
                    if other != name:
                        m.members[other] = Member(other, self.addresses[other], 0, State.ALIVE, 0.0)
                m.alive_count = len(names)
                node.attachments = dict(records)
                node._forget_views()
            node.cluster_queue.clear()
            node.take_datagrams()
            node.take_streams()
            node.take_changes()
            for state in node.networks.values():
                state.needs_join_sync = False
                state.syncing = None
            node._pending.clear()
            node._absorbing.clear()
            self._schedule_tick(name)

    def _schedule_workloads(self) -> None:
        for spec in self.options.workloads:
            members = list(self.members[spec.network])
            self.rng.shuffle(members)
            writers = members[: spec.writers] if spec.writers else members
            keys = []
            for i in range(spec.creates):
                at = spec.start + (i / spec.rate if spec.rate else 0.0)
                writer = writers[i % len(writers)]
                key = f"{spec.prefix}{i:06d}"
                keys.append((writer, key, at))
                value = f"198.19.{(i >> 8) & 255}.{i & 255}/16 02:42:c6:13:{(i >> 8) & 255:02x}:{i & 255:02x}".encode()
                self.call_at(at, lambda w=writer, n=spec.network, k=key, v=value: self._write(w, n, k, v))
                self.settle_at = max(self.settle_at, at)
            for writer, key, at in self.rng.sample(keys, int(len(keys) * spec.delete_fraction)):
                when = at + spec.delete_after
                self.call_at(when, lambda w=writer, n=spec.network, k=key: self._write(w, n, k, None))
                self.settle_at = max(self.settle_at, when)

    # === operations (what the daemon's API does, and its journal) ==================================

    def _write(self, name: str, network: str, key: str, value: bytes | None, flush: bool = True) -> bool:
        """Write (or with value None delete) an entry as its owner's API would; False if it could not."""
        node = self.nodes.get(name)
        if node is None or name in self.crashed or name in self.paused or network not in node.networks:
            self.failed_writes += 1
            return False
        wall = int(self._wall(name) * 1000)
        try:
            if value is None:
                event = node.delete(network, TABLE, key, self.now, wall)
            else:
                event = node.write(network, TABLE, key, value, self.now, wall)
        except LocalProtocolError:  # deleting what is not there
            self.failed_writes += 1
            return False
        self.truth.record(event)
        if flush:
            self._flush(name)
        return True

    def _attach(self, name: str, network: str) -> None:
        node = self.nodes.get(name)
        if node is None or name in self.crashed or name in self.paused:
            return
        self.attachment_churn = True
        node.attach(network, self.now)
        self.attached[name].add(network)
        self.journals[name].networks.add(network)
        self._flush(name)

    def _detach(self, name: str, network: str) -> None:
        node = self.nodes.get(name)
        if node is None or name in self.crashed or name in self.paused or network not in node.networks:
            return
        self.attachment_churn = True
        node.detach(network, self.now, int(self._wall(name) * 1000))
        self.attached[name].discard(network)
        self.truth.delete_all(name, network)
        self.journals[name].detached(network)
        self._flush(name)

    # === process faults ===========================================================================

    def _crash(self, name: str, keep_journal: bool = True) -> None:
        node = self.nodes.get(name)
        if node is None or name in self.crashed:
            return
        if keep_journal:
            journal = self.journals[name]
            journal.incarnation = node.membership.incarnation
            # The daemon leases Lamport time durably before any of it leaves the host.
            journal.lamport = max(journal.lamport, node.clock.time)
        else:  # a new life: the state directory is gone, and with it every own entry
            self.journals[name] = _Journal(incarnation=0)
            self.truth.delete_all(name)
        self.retired_stats.append(dict(node.stats))
        self.crashed.add(name)
        self.paused.pop(name, None)  # whatever waited for a paused process is lost with it
        self.attached[name] = set()

    def _leave(self, name: str) -> None:
        """A graceful stop (SIGTERM): the Leave goes out, then the process ends; the journal stays."""
        node = self.nodes.get(name)
        if node is None or name in self.crashed or name in self.paused:
            return
        node.leave(self.now)
        self._flush(name)
        self._crash(name)

    def _start(self, name: str) -> None:
        """Start a node's process as the daemon does: attach its configured and journaled networks,
        restore its own entries, then join through the seeds, retrying with backoff."""
        if name not in self.crashed:
            return
        journal = self.journals[name]
        self.crashed.discard(name)
        self.tick_at.pop(name, None)
        self.observer.restarted(name)
        node = self._new_node(name, journal)
        for network in sorted(set(self.networks_of[name]) | journal.networks):
            node.attach(network, self.now)
            self.attached[name].add(network)
        wall = self._wall(name)
        node.restore(journal.load(wall, self.config.tombstone_ttl), self.now, int(wall * 1000))
        self._join(name, node, 0.5)

    def _join(self, name: str, node: Node, backoff: float) -> None:
        if self.nodes.get(name) is not node or name in self.crashed or node.stats.get("joined", 0):
            return
        # Every other node is a seed: a node whose only seeds are down for good can never join,
        # and the model could not tell that apart from a protocol failure.
        seeds = [self.addresses[n] for n in self.names if n != name]
        node.join(seeds, self.now)
        self._flush(name)
        self.call_at(self.now + backoff, lambda: self._join(name, node, min(2 * backoff, 30.0)))

    def _pause(self, name: str, until: float) -> None:
        if name in self.crashed or name in self.paused:
            return
        self.paused[name] = []
        node = self.nodes[name]
        self.call_at(until, lambda: self._resume(name, node))

    def _resume(self, name: str, node: Node | None = None) -> None:
        """The process runs again: it handles, in order, everything that reached it meanwhile."""
        if node is not None and self.nodes.get(name) is not node:
            return  # crashed and restarted while paused: that pause ended with the process
        backlog = self.paused.pop(name, None)
        if backlog is None:
            return
        for item in backlog:
            self._handle((self.now, *item[1:]))
        self.tick_at.pop(name, None)
        self._schedule_tick(name)

    # === network faults ===========================================================================

    def _partition_blocker(self, spec: PartitionSpec) -> tuple[Blocker, list[list[str]]]:
        names = list(self.names)
        self.rng.shuffle(names)
        cut = partition(spec.shape, names, spec.symmetric)
        return cut.blocked, cut.groups

    def _schedule_faults(self) -> None:
        for spec in self.options.partitions:
            blocker, groups = self._partition_blocker(spec)
            self.call_at(spec.start, lambda b=blocker: self.blockers.append(b))
            self.call_at(spec.end, lambda b=blocker: self._unblock(b))
            self._fault_log.append(
                {
                    "fault": "partition",
                    "shape": spec.shape,
                    "start": spec.start,
                    "end": spec.end,
                    "symmetric": spec.symmetric,
                    "group_sizes": [len(g) for g in groups],
                }
            )
            self.settle_at = max(self.settle_at, spec.end)
        for crash in self.options.crashes:
            count = max(1, int(len(self.names) * crash.fraction))
            victims = sorted(self.rng.sample(self.names, count))
            stop = self._leave if crash.graceful else self._crash
            for victim in victims:
                self.call_at(crash.at, lambda v=victim, stop=stop: stop(v))
                if crash.restart_at is not None:
                    self.call_at(crash.restart_at, lambda v=victim: self._start(v))
            kind = "restart" if crash.graceful else "crash"
            self._fault_log.append({"fault": kind, "nodes": victims, "at": crash.at, "restart_at": crash.restart_at})
            self.settle_at = max(self.settle_at, crash.restart_at or crash.at)

    def _unblock(self, blocker: Blocker) -> None:
        if blocker in self.blockers:
            self.blockers.remove(blocker)

    def _replay(self, count: int) -> None:
        """Deliver captured datagrams again, as an attacker on the path (or a confused router) would."""
        for _ in range(min(count, len(self.captured))):
            dst, src_addr, data = self.captured[self.net_rng.randrange(len(self.captured))]
            self.replayed += 1
            self._push(self.now + self.net_rng.uniform(self.options.latency_min, self.options.latency_max),
                       DATAGRAM, dst, src_addr, data)  # fmt: skip

    def _forge(self, step: Step) -> None:
        """A datagram from a member (or anyone who can send as one) with an absurd clock in it."""
        target = self.nodes.get(step.node)
        if target is None or step.node in self.crashed:
            return
        message: Message | None = None
        if step.forgery == "sync-erase" and target.networks:
            # An unsolicited sync push that vouches for the peer's entries up to the end of time.
            network = sorted(target.networks)[0]
            push = SyncPush(network, (), {step.peer: (MAX_INT, 0)}, (step.peer,))
            self.forged += 1
            self._push(self.now, STREAM_REQUEST, step.node, step.peer, 0, encode_frame(step.peer, push), None)
            return
        if step.forgery == "incarnation":
            message = Suspect(step.peer, MAX_INT, step.peer)
        elif step.forgery == "lamport" and target.networks:
            # A real entry at the end of time, then tombstones that climb the clock a window at a
            # time (each within a bound measured from the receiver's own clock, 2**63 in 8,192).
            network = sorted(target.networks)[0]
            shown = list(target.networks[network].table.visible())
            stair = [
                TableEvent(
                    network, TABLE, f"forged-{i}", b"", step.peer, target.clock.time + i * LAMPORT_WINDOW, 0, True
                )
                for i in range(1, 65)
            ]
            if shown:
                real = shown[self.net_rng.randrange(len(shown))].event
                stair.append(TableEvent(network, real.table, real.key, real.value, real.owner, MAX_INT, real.wall_ms,
                                        False))  # fmt: skip
            self.forged += 1
            self._push(self.now, DATAGRAM, step.node, self.addresses[step.peer], encode_datagram(step.peer, stair))
            return
        if message is None:  # an attachment record, also when the target holds no entry to forge
            networks = self.networks_of[step.peer] or sorted(self.members)
            message = NodeNetwork(step.peer, networks[0], MAX_INT, False)
        self.forged += 1
        self._push(self.now, DATAGRAM, step.node, self.addresses[step.peer], encode_datagram(step.peer, [message]))

    # === generated schedules ======================================================================

    def _schedule_steps(self, schedule: Schedule) -> None:
        for index, step in enumerate(schedule.steps):
            self.call_at(step.at, lambda s=step, i=index: self._do(s, i))
        self.call_at(schedule.quiet_at, self._quiet)
        self.settle_at = max(self.settle_at, schedule.quiet_at)

    def _do(self, step: Step, index: int) -> None:
        kind = step.kind
        if kind == "write":
            self._write(step.node, step.network, step.key, step.value.encode())
        elif kind == "delete":
            self._write(step.node, step.network, step.key, None)
        elif kind in ("burst", "delete-burst"):
            count = step.count or self._burst_size(step)
            for i in range(count):
                value = None if kind == "delete-burst" else f"{step.node}#{step.key}{i}@{index}".encode()
                if not self._write(step.node, step.network, f"{step.key}{i}", value, flush=False) and kind == "burst":
                    break
            if step.node not in self.crashed and step.node in self.nodes and step.node not in self.paused:
                self._flush(step.node)
        elif kind == "attach":
            self._attach(step.node, step.network)
        elif kind == "detach":
            self._detach(step.node, step.network)
        elif kind == "crash":
            self._crash(step.node)
        elif kind == "new-life":
            self._crash(step.node, keep_journal=False)
        elif kind == "leave":
            self._leave(step.node)
        elif kind == "start":
            self._start(step.node)
        elif kind == "pause":
            self._pause(step.node, step.until)
        elif kind == "partition":
            blocker = partition(step.shape, step.order, step.symmetric).blocked
            self.blockers.append(blocker)
            self.call_at(step.until, lambda: self._unblock(blocker))
        elif kind in ("loss", "duplicate", "corrupt", "delay"):
            self.link_faults[index] = step
            self.call_at(step.until, lambda: self.link_faults.pop(index, None))
        elif kind == "replay":
            self._replay(step.count)
        elif kind == "forge":
            self._forge(step)

    def _burst_size(self, step: Step) -> int:
        """A delete-burst removes every entry its burst made: as many as the owner holds of that prefix."""
        node = self.nodes.get(step.node)
        if node is None or step.network not in node.networks:
            return 0
        table = node.networks[step.network].table
        return sum(1 for e in table.visible() if e.event.owner == step.node and e.event.key.startswith(step.key))

    def _quiet(self) -> None:
        """The liveness phase begins: every network fault healed, every paused node running again,
        nothing more written. A node that is down stays down: its entries must vanish everywhere."""
        self.blockers.clear()
        self.link_faults.clear()
        for name in sorted(self.paused):
            self._resume(name)

    # === convergence ==============================================================================

    def live(self) -> list[str]:
        return [n for n in self.names if n not in self.crashed]

    def present(self, network: str) -> list[str]:
        """Running nodes attached to `network`: its members, whose entries must be everywhere in it."""
        return [n for n in self.names if network in self.attached[n] and n not in self.crashed]

    def _table_view(self, node: Node, network: str) -> dict[tuple[str, str], tuple[str, bytes]]:
        return {
            (e.event.table, e.event.key): (e.event.owner, e.event.value) for e in node.networks[network].table.visible()
        }

    def network_state(self, network: str) -> dict[str, Any]:
        present = self.present(network)
        expected = self.truth.expected(network, present)
        missing: dict[str, list[str]] = {}
        unexpected: dict[str, list[str]] = {}
        for name in present:
            view = self._table_view(self.nodes[name], network)
            miss, extra = compare(expected, view)
            live = self.nodes[name].networks[network].table.live
            if live != len(view):  # what the API reports as the table's size, kept incrementally
                extra.append(f"(live count {live}, {len(view)} visible)")
            if miss:
                missing[name] = miss
            if extra:
                unexpected[name] = extra
        return {"members": len(present), "expected": len(expected), "missing": missing, "unexpected": unexpected}

    def _digests(self, network: str) -> set[int]:
        """The table digests of a network's present members ({0} when none is present)."""
        return {self.nodes[n].networks[network].table.digest for n in self.present(network)} or {0}

    def _network_converged(self, network: str) -> bool:
        """All present members hold identical tables (cheap digest test) that match the ground truth."""
        if len(self._digests(network)) > 1:
            return False
        state = self.network_state(network)
        return not state["missing"] and not state["unexpected"]

    def _membership_views(self) -> dict[str, dict[str, list[str]]]:
        """For each running node that sees the cluster wrongly: running nodes it does not see alive,
        and stopped ones it still takes for alive."""
        live = set(self.live())
        wrong = {}
        for name in sorted(live):
            members = self.nodes[name].membership.members
            unseen = sorted(o for o in live if o != name and (o not in members or members[o].state != State.ALIVE))
            ghosts = sorted(o for o in self.crashed if o in members and members[o].state not in GONE)
            if unseen or ghosts:
                wrong[name] = {"not_alive": unseen, "stopped_but_live": ghosts}
        return wrong

    def _membership_converged(self) -> bool:
        if self.static is not None:
            return True
        live = self.live()
        if any(self.nodes[n].membership.alive_count != len(live) for n in live):
            return False
        return not self._membership_views()

    def _check(self) -> None:
        if self.now < self.settle_at:
            return
        for network in self.members:
            if network in self.network_converged_at:
                # Verified against the truth once; after that the digest tells whether it moved.
                if self._digests(network) != {self._converged_digest[network]}:
                    del self.network_converged_at[network]
            elif self._network_converged(network):
                present = self.present(network)
                last = max((self.observer.last_change.get((n, network), 0.0) for n in present), default=0.0)
                self.network_converged_at[network] = last
                (self._converged_digest[network],) = self._digests(network)
        if not self._membership_converged():
            self.membership_converged_at = None
        elif self.membership_converged_at is None:
            self.membership_converged_at = self.now
        if len(self.network_converged_at) < len(self.members) or self.membership_converged_at is None:
            self.converged_at = None  # lost again (a generated run holds on after converging)
        elif self.converged_at is None:
            self.converged_at = self.now

    def _liveness_violation(self) -> Violation | None:
        """What did not converge by the deadline, with the evidence: the first network (or the
        membership) that is wrong, and which nodes hold what."""
        for network in self.members:
            if network in self.network_converged_at:
                continue
            state = self.network_state(network)
            culprits = sorted(set(state["missing"]) | set(state["unexpected"]))
            digests = {n: self.nodes[n].networks[network].table.digest for n in self.present(network)}
            return Violation(
                "liveness-tables",
                self.now,
                culprits[0] if culprits else "",
                {
                    "network": network,
                    "expected_entries": state["expected"],
                    "missing": {k: v[:10] for k, v in state["missing"].items()},
                    "unexpected": {k: v[:10] for k, v in state["unexpected"].items()},
                    "distinct_digests": len(set(digests.values())),
                },
            )
        if self.membership_converged_at is None:
            views = self._membership_views()
            return Violation("liveness-membership", self.now, next(iter(views), ""), {"views": views})
        return None

    # === running ==================================================================================

    def _handle(self, item: tuple[Any, ...]) -> None:
        """Deliver one datagram or stream event to a running node (or to a paused one's backlog)."""
        at, kind = item[0], item[2]
        target = item[3]  # the receiver: dst of a datagram or request, src of a reply or of a sent request
        if target in self.crashed:
            if kind == DATAGRAM:
                self.dropped["crashed"] += 1
            elif kind == STREAM_REQUEST:
                self._push(at + self.options.connect_timeout, STREAM_REPLY, item[4], item[5], None, item[7])
            return
        if target in self.paused:
            self.paused[target].append(item)
            return
        if kind == DATAGRAM:
            dst, src_addr, data = item[3], item[4], item[5]
            self.trace.update(f"{at:.9f}|{dst}|".encode())
            self.trace.update(data)
            self.delivered += 1
            if self.schedule is not None:
                self._capture(dst, src_addr, data)
            self.nodes[dst].handle_datagram(src_addr, data, at)
            self._flush(dst)
        elif kind == STREAM_REQUEST:
            dst, src, sid, frame = item[3], item[4], item[5], item[6]
            self.trace.update(f"{at:.9f}|{dst}|stream|".encode())
            self.trace.update(frame)
            reply = self.nodes[dst].handle_stream(frame, at)
            self._flush(dst)
            delay = self.net_rng.uniform(self.options.latency_min, self.options.latency_max)
            delay += len(reply) / self.options.bandwidth + sum(self._retransmissions())
            self._push(at + delay, STREAM_REPLY, src, sid, reply or None, item[7])
        else:  # STREAM_SENT or STREAM_REPLY, to the process that opened the stream
            opener = item[-1]
            if opener is not None and self.nodes[target] is not opener:
                return  # a former life's: a new life numbers its streams from 1 again
            if kind == STREAM_SENT:
                self.nodes[target].on_stream_sent(item[4], at)
            else:
                self.nodes[target].on_stream_reply(item[4], item[5], at)
                self._flush(target)

    def run(self, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        started = time.perf_counter()
        if self.schedule is None:
            self._warm_start(self.names)
            self._schedule_workloads()
            self._schedule_faults()
            deadline = min(self.options.max_time, self.settle_at + self.options.liveness_bound)
        else:
            cold = set(self.schedule.cold)
            self.crashed.update(cold)
            self._warm_start([n for n in self.names if n not in cold])
            self._schedule_steps(self.schedule)
            deadline = self.settle_at + liveness_bound(self.config, len(self.names)) + self.hold
        checks = self.settle_at
        while checks <= deadline:
            self.call_at(checks, self._check)
            checks += self.options.check_interval
        next_report = started + 5.0
        heap = self.heap
        violations = self.observer.violations
        stop_on_violation = self.schedule is not None
        while heap:
            item = heapq.heappop(heap)
            at = item[0]
            if at > deadline:
                break
            self.now = at
            kind = item[2]
            if kind == TICK:
                name = item[3]
                if name in self.crashed or name in self.paused or self.tick_at.get(name) != at:
                    continue  # superseded by an earlier tick, or the node is not running
                del self.tick_at[name]
                self.nodes[name].tick(at)
                self._flush(name)
            elif kind == CALL:
                item[3]()
                if self.converged_at is not None and self.now >= self.converged_at + self.hold:
                    break
            else:
                self._handle(item)
            if stop_on_violation and violations:
                break
            if progress is not None and time.perf_counter() >= next_report:
                next_report = time.perf_counter() + 5.0
                progress(f"virtual {self.now:7.2f}s  delivered {self.delivered:,}  queue {len(heap):,}")
        if self.converged_at is None and not violations:
            self.liveness = self._liveness_violation()
        return self.result(time.perf_counter() - started)

    # === verdict ==================================================================================

    def _stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for stats in [*self.retired_stats, *(n.stats for n in self.nodes.values())]:
            for key, value in stats.items():
                total[key] = total.get(key, 0) + value
        return total

    def violations(self) -> list[Violation]:
        """Safety violations in the order they happened, then the liveness one, if any."""
        return [*self.observer.violations, *([self.liveness] if self.liveness else [])]

    def result(self, wall_seconds: float) -> dict[str, Any]:
        stats = self._stats()
        networks = {}
        valid = True
        for network in self.members:
            state = self.network_state(network)
            converged = network in self.network_converged_at
            at = self.network_converged_at.get(network)
            networks[network] = {
                "members": state["members"],
                "expected_entries": state["expected"],
                "converged": converged,
                "converged_at": at,
                "convergence_after_settle": None if at is None else max(0.0, at - self.settle_at),
                "missing_count": sum(map(len, state["missing"].values())),
                "unexpected_count": sum(map(len, state["unexpected"].values())),
                "missing_sample": {k: v[:5] for k, v in list(state["missing"].items())[:5]},
                "unexpected_sample": {k: v[:5] for k, v in list(state["unexpected"].items())[:5]},
            }
            valid &= converged and not state["missing"] and not state["unexpected"]
        violations = self.violations()
        leaks = sum(1 for v in violations if v.invariant == "scope")
        drops = stats.get("dropped_out_of_scope", 0)
        resurrections = self.observer.resurrections
        # With a fixed set of members, any drop means some node sent outside the network's scope.
        unexplained_drops = 0 if self.attachment_churn else drops
        valid &= not violations and unexplained_drops == 0 and self.membership_converged_at is not None
        needed = sum(count * (len(self.members[net]) - 1) for net, count in self.truth.per_network.items())
        received = stats.get("events_in", 0) + stats.get("sync_entries_in", 0)
        lat = self.observer.latencies
        node_count = len(self.names)
        return {
            "valid": bool(valid),
            "seed": self.options.seed,
            "options": self.options.to_dict(),
            "faults": self._fault_log,
            "settle_at": self.settle_at,
            "virtual_time": self.now,
            "converged_at": self.converged_at,
            "membership_converged_at": self.membership_converged_at,
            "networks": networks,
            "writes": self.truth.writes,
            "failed_writes": self.failed_writes,
            "latency": {
                "count": len(lat),
                "p50": percentile(lat, 50),
                "p90": percentile(lat, 90),
                "p99": percentile(lat, 99),
                "max": max(lat) if lat else math.nan,
            },
            "violation": violations[0].to_dict() if violations else None,
            "violations": [v.to_dict() for v in violations],
            # One vocabulary with the lab: a leak is an entry held where its network is not; an
            # out-of-scope receipt is one that arrived there and was dropped (the guard working).
            "scope_leaks": leaks,
            "out_of_scope_received": drops,
            "resurrections": len(resurrections),
            "resurrection_sample": [v.to_dict() for v in resurrections[:5]],
            "traffic": {
                "datagrams_delivered": self.delivered,
                "datagrams_dropped": dict(self.dropped),
                "datagrams_corrupted": self.corrupted,
                "datagrams_replayed": self.replayed,
                "datagrams_forged": self.forged,
                "bytes_out_per_node": stats.get("bytes_out", 0) / node_count,
                "datagrams_out_per_node": stats.get("datagrams_out", 0) / node_count,
                "copies_per_event_per_node": received / max(1, needed),
                "sync_copies_per_event_per_node": stats.get("sync_entries_in", 0) / max(1, needed),
                "duplicate_events": stats.get("events_duplicate", 0),
                "syncs": {k[6:]: v for k, v in stats.items() if k.startswith("syncs_")},
            },
            "trace_hash": self.trace.hexdigest(),
            "wall_seconds": wall_seconds,
        }
