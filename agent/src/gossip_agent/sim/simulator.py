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
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

from ..core.config import profile
from ..core.membership import GONE, Member, State
from ..core.node import Node
from ..core.table import Change
from ..core.wire import Address, NodeNetwork, TableEvent
from .checker import GroundTruth, Observer, compare, percentile
from .options import OptionError, PartitionSpec, SimOptions
from .partitions import partition

PORT = 7946
TICK, DATAGRAM, STREAM_REQUEST, STREAM_REPLY, CALL = range(5)
Blocker = Callable[[str, str], bool]


class StaticView:
    """The simulator's shared, fixed cluster view (membership='static')."""

    def __init__(self, members: dict[str, tuple[str, ...]], addresses: dict[str, Address]) -> None:
        self._members = {net: list(names) for net, names in members.items()}
        self._addresses = addresses

    def network_nodes(self, network: str) -> list[str]:
        return self._members.get(network, [])

    def address(self, name: str) -> Address:
        return self._addresses[name]


@dataclass(slots=True)
class _Journal:
    """What a crashed node's sqlite journal would hold: its own entries and counters."""

    own: list[TableEvent]
    lamport: int
    incarnation: int


class Simulator:
    def __init__(self, options: SimOptions) -> None:
        self.options = options
        try:
            self.config = profile(options.profile).with_overrides(dict(options.overrides))
        except ValueError as exc:
            raise OptionError(str(exc)) from None
        if options.membership == "static" and options.crashes:
            raise OptionError("crashes need membership=swim: a static view never detects them")
        self.rng = random.Random(options.seed)
        self.net_rng = random.Random(self.rng.getrandbits(64))
        self.names = options.node_names()
        self.members = options.network_members()
        self.addresses: dict[str, Address] = {n: (n, PORT) for n in self.names}
        self.by_address = {a: n for n, a in self.addresses.items()}
        self.static = StaticView(self.members, self.addresses) if options.membership == "static" else None
        self.networks_of: dict[str, list[str]] = {n: [] for n in self.names}
        for network, names in self.members.items():
            for name in names:
                self.networks_of[name].append(network)
        self.nodes: dict[str, Node] = {}
        self.retired_stats: list[dict[str, int]] = []  # counters of node incarnations that crashed
        self.crashed: set[str] = set()
        self.journals: dict[str, _Journal] = {}
        self.heap: list[tuple[Any, ...]] = []
        self.seq = 0
        self.now = 0.0
        self.tick_at: dict[str, float] = {}
        self.blockers: list[Blocker] = []
        self.truth = GroundTruth()
        self.observer = Observer()
        self.trace = blake2b(digest_size=16)
        self.delivered = 0
        self.dropped = {"loss": 0, "partition": 0, "crashed": 0}
        self.failed_writes = 0
        self.settle_at = 0.0  # after this no more writes or faults are scheduled
        self.converged_at: float | None = None
        self.network_converged_at: dict[str, float] = {}
        self._converged_digest: dict[str, int] = {}
        self.membership_converged_at: float | None = None
        self._fault_log: list[dict[str, Any]] = []

    # === scheduling ===============================================================================

    def _push(self, at: float, kind: int, *args: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, *args))

    def call_at(self, at: float, fn: Callable[[], None]) -> None:
        self._push(at, CALL, fn)

    def _schedule_tick(self, name: str) -> None:
        node = self.nodes[name]
        at = max(node.next_deadline(), self.now)
        if at < self.tick_at.get(name, math.inf):  # an earlier tick supersedes the queued one
            self.tick_at[name] = at
            self._push(at, TICK, name)

    # === network ==================================================================================

    def _blocked(self, src: str, dst: str) -> bool:
        return any(b(src, dst) for b in self.blockers)

    def _flush(self, name: str) -> None:
        node = self.nodes[name]
        for addr, data in node.take_datagrams():
            dst = self.by_address.get(addr)
            if dst is None:
                continue
            if self._blocked(name, dst):
                self.dropped["partition"] += 1
                continue
            if self.net_rng.random() < self.options.loss:
                self.dropped["loss"] += 1
                continue
            copies = 2 if self.net_rng.random() < self.options.duplicate else 1
            for _ in range(copies):
                delay = self.net_rng.uniform(self.options.latency_min, self.options.latency_max)
                self._push(self.now + delay, DATAGRAM, dst, node.addr, data)
        for request in node.take_streams():
            dst = self.by_address.get(request.addr)
            if dst is None or dst in self.crashed or self._blocked(name, dst) or self._blocked(dst, name):
                self._push(self.now + self.options.connect_timeout, STREAM_REPLY, name, request.id, None)
                continue
            delay = self.net_rng.uniform(self.options.latency_min, self.options.latency_max)
            delay += len(request.frame) / self.options.bandwidth
            self._push(self.now + delay, STREAM_REQUEST, dst, name, request.id, request.frame)
        for change in node.take_changes():
            if isinstance(change, Change):
                self.observer.on_change(name, change)
        self._schedule_tick(name)

    # === setup ====================================================================================

    def _new_node(self, name: str, journal: _Journal | None = None) -> Node:
        rng = random.Random(self.rng.getrandbits(64))
        # A restarted node starts a new life one incarnation up, as the daemon does.
        lamport, incarnation = (journal.lamport, journal.incarnation + 1) if journal else (0, 0)
        node = Node(
            name,
            self.addresses[name],
            self.config,
            rng,
            self.now,
            lamport=lamport,
            incarnation=incarnation,
            static=self.static,
        )
        self.nodes[name] = node
        return node

    def _warm_start(self) -> None:
        """Every node starts as if the cluster had formed long ago: all alive, all attachments known.

        Join storms are a separate matter; experiments measure what happens to a running cluster.
        """
        records = {
            (name, net): NodeNetwork(name, net, 1, True) for net, names in self.members.items() for name in names
        }
        for name in self.names:
            node = self._new_node(name)
            for network in self.networks_of[name]:
                node.attach(network, 0.0)
            node.clock.witness(1)
            if self.static is None:
                m = node.membership
                for other in self.names:
                    if other != name:
                        m.members[other] = Member(other, self.addresses[other], 0, State.ALIVE, 0.0)
                m.alive_count = len(self.names)
                node.attachments = dict(records)
                node._peers_cache.clear()
            node.cluster_queue.clear()
            node.take_datagrams()
            node.take_streams()
            node.take_changes()
            for state in node.networks.values():
                state.needs_join_sync = False
                state.syncing = None
            node._pending.clear()
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
                self.call_at(at, self._writer(writer, spec.network, key, value))
                self.settle_at = max(self.settle_at, at)
            for writer, key, at in self.rng.sample(keys, int(len(keys) * spec.delete_fraction)):
                when = at + spec.delete_after
                self.call_at(when, self._writer(writer, spec.network, key, None))
                self.settle_at = max(self.settle_at, when)

    def _writer(self, name: str, network: str, key: str, value: bytes | None) -> Callable[[], None]:
        def write() -> None:
            node = self.nodes.get(name)
            if node is None or name in self.crashed:
                self.failed_writes += 1
                return
            wall = int(self.now * 1000)
            if value is None:
                entry = node.networks[network].table.get("endpoints", key)
                if entry is None or not entry.visible:
                    self.failed_writes += 1
                    return
                event = node.delete(network, "endpoints", key, self.now, wall)
            else:
                event = node.write(network, "endpoints", key, value, self.now, wall)
            self.truth.record(event)
            self._flush(name)

        return write

    # === faults ===================================================================================

    def _partition_blocker(self, spec: PartitionSpec) -> tuple[Blocker, list[list[str]]]:
        names = list(self.names)
        self.rng.shuffle(names)
        cut = partition(spec.shape, names, spec.symmetric)
        return cut.blocked, cut.groups

    def _schedule_faults(self) -> None:
        for spec in self.options.partitions:
            blocker, groups = self._partition_blocker(spec)
            self.call_at(spec.start, lambda b=blocker: self.blockers.append(b))
            self.call_at(spec.end, lambda b=blocker: self.blockers.remove(b))
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
            for victim in victims:
                self.call_at(crash.at, lambda v=victim: self._crash(v))
                if crash.restart_at is not None:
                    self.call_at(crash.restart_at, lambda v=victim: self._restart(v))
            self._fault_log.append({"fault": "crash", "nodes": victims, "at": crash.at, "restart_at": crash.restart_at})
            self.settle_at = max(self.settle_at, crash.restart_at or crash.at)

    def _crash(self, name: str) -> None:
        node = self.nodes.get(name)
        if node is None or name in self.crashed:
            return
        own = [
            e.event
            for s in node.networks.values()
            for e in s.table.entries.values()
            if e.event.owner == name and not e.withdrawn
        ]
        self.journals[name] = _Journal(own, node.clock.time, node.membership.incarnation)
        self.retired_stats.append(dict(node.stats))
        self.crashed.add(name)

    def _restart(self, name: str) -> None:
        if name not in self.crashed:
            return
        journal = self.journals.pop(name)
        self.crashed.discard(name)
        node = self._new_node(name, journal)
        for network in self.networks_of[name]:
            node.attach(network, self.now)
        node.restore(journal.own, self.now, int(self.now * 1000))
        seeds = [self.addresses[n] for n in self.names if n != name and n not in self.crashed][:3]
        node.join(seeds, self.now)
        self.tick_at.pop(name, None)
        self._flush(name)

    # === convergence ==============================================================================

    def live(self) -> list[str]:
        return [n for n in self.names if n not in self.crashed]

    def _table_view(self, node: Node, network: str) -> dict[tuple[str, str], tuple[str, bytes]]:
        return {
            (e.event.table, e.event.key): (e.event.owner, e.event.value) for e in node.networks[network].table.visible()
        }

    def network_state(self, network: str) -> dict[str, Any]:
        live = [n for n in self.members[network] if n not in self.crashed]
        expected = self.truth.expected(network, live)
        missing: dict[str, list[str]] = {}
        unexpected: dict[str, list[str]] = {}
        for name in live:
            miss, extra = compare(expected, self._table_view(self.nodes[name], network))
            if miss:
                missing[name] = miss
            if extra:
                unexpected[name] = extra
        return {"members": len(live), "expected": len(expected), "missing": missing, "unexpected": unexpected}

    def _digests(self, network: str) -> set[int]:
        return {self.nodes[n].networks[network].table.digest for n in self.members[network] if n not in self.crashed}

    def _network_converged(self, network: str) -> bool:
        """All live members hold identical tables (cheap digest test) that match the ground truth."""
        if len(self._digests(network)) > 1:
            return False
        state = self.network_state(network)
        return not state["missing"] and not state["unexpected"]

    def _membership_converged(self) -> bool:
        if self.static is not None:
            return True
        live = set(self.live())
        for name in live:
            m = self.nodes[name].membership
            if m.alive_count != len(live):
                return False
            for other in self.crashed:
                member = m.members.get(other)
                if member is not None and member.state not in GONE:
                    return False
        return True

    def _check(self) -> None:
        if self.now < self.settle_at:
            return
        for network in self.members:
            if network in self.network_converged_at:
                # Verified against the truth once; after that the digest tells whether it moved.
                if self._digests(network) != {self._converged_digest[network]}:
                    del self.network_converged_at[network]
            elif self._network_converged(network):
                live = [n for n in self.members[network] if n not in self.crashed]
                last = max((self.observer.last_change.get((n, network), 0.0) for n in live), default=0.0)
                self.network_converged_at[network] = last
                (self._converged_digest[network],) = self._digests(network)
        if self.membership_converged_at is None and self._membership_converged():
            self.membership_converged_at = self.now
        if len(self.network_converged_at) == len(self.members) and self.membership_converged_at is not None:
            self.converged_at = self.now

    # === running ==================================================================================

    def run(self, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        started = time.perf_counter()
        self._warm_start()
        self._schedule_workloads()
        self._schedule_faults()
        deadline = min(self.options.max_time, self.settle_at + self.options.liveness_bound)
        checks = self.settle_at
        while checks <= deadline:
            self.call_at(checks, self._check)
            checks += self.options.check_interval
        next_report = started + 5.0
        heap = self.heap
        while heap:
            item = heapq.heappop(heap)
            at = item[0]
            if at > deadline:
                break
            self.now = at
            kind = item[2]
            if kind == TICK:
                name = item[3]
                if name in self.crashed or self.tick_at.get(name) != at:
                    continue  # superseded by an earlier tick, or the node crashed
                del self.tick_at[name]
                self.nodes[name].tick(at)
                self._flush(name)
            elif kind == DATAGRAM:
                dst, src_addr, data = item[3], item[4], item[5]
                if dst in self.crashed:
                    self.dropped["crashed"] += 1
                    continue
                self.trace.update(f"{at:.9f}|{dst}|".encode())
                self.trace.update(data)
                self.delivered += 1
                self.nodes[dst].handle_datagram(src_addr, data, at)
                self._flush(dst)
            elif kind == STREAM_REQUEST:
                dst, src, sid, frame = item[3], item[4], item[5], item[6]
                if dst in self.crashed:
                    self._push(at + self.options.connect_timeout, STREAM_REPLY, src, sid, None)
                    continue
                self.trace.update(f"{at:.9f}|{dst}|stream|".encode())
                self.trace.update(frame)
                reply = self.nodes[dst].handle_stream(frame, at)
                self._flush(dst)
                delay = self.net_rng.uniform(self.options.latency_min, self.options.latency_max)
                self._push(at + delay + len(reply) / self.options.bandwidth, STREAM_REPLY, src, sid, reply or None)
            elif kind == STREAM_REPLY:
                src, sid, reply = item[3], item[4], item[5]
                if src in self.crashed:
                    continue
                self.nodes[src].on_stream_reply(sid, reply, at)
                self._flush(src)
            else:
                item[3]()
                if self.converged_at is not None:
                    break
            if progress is not None and time.perf_counter() >= next_report:
                next_report = time.perf_counter() + 5.0
                progress(f"virtual {self.now:7.2f}s  delivered {self.delivered:,}  queue {len(heap):,}")
        return self.result(time.perf_counter() - started)

    # === verdict ==================================================================================

    def _stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for stats in [*self.retired_stats, *(n.stats for n in self.nodes.values())]:
            for key, value in stats.items():
                total[key] = total.get(key, 0) + value
        return total

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
        leaks = stats.get("dropped_out_of_scope", 0)
        resurrections = len(self.observer.resurrections)
        valid &= leaks == 0 and resurrections == 0 and self.membership_converged_at is not None
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
            "leaks": leaks,
            "resurrections": resurrections,
            "resurrection_sample": self.observer.resurrections[:5],
            "traffic": {
                "datagrams_delivered": self.delivered,
                "datagrams_dropped": dict(self.dropped),
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
