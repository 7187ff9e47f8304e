"""What a simulated run must show: safety at every step, and per network, once quiet, every member
holding exactly what the model says.

The model (`GroundTruth`) follows the operations the run made. The `Observer` sees every visible
change at every node as it happens: it records delivery latency and checks the safety invariants
there, so a violation is caught at the step that made it, with the node and the entry.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..core.table import Change
from ..core.wire import TableEvent

EntryId = tuple[str, str, str]  # network, table, key


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


@dataclass(frozen=True, slots=True)
class Violation:
    """A safety invariant that failed: which, when, where, and the evidence."""

    invariant: str  # scope | unwritten-value | resurrection | liveness-tables | liveness-membership
    at: float
    node: str
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"invariant": self.invariant, "at": round(self.at, 6), "node": self.node, **self.detail}


@dataclass(slots=True)
class GroundTruth:
    """The model: what each owner's entries must be, from the operations the workload made.

    For every owner and network, the result of the owner's own last operation on each key (a
    value, or None once deleted). A detach deletes the owner's entries of that network (it writes
    tombstones), and a new life (journal lost) deletes all of them: what an owner wrote before either
    must be gone everywhere once the run is quiet. Every value ever written is remembered with its
    place in the global order of writes, which the safety invariants use.
    """

    own: dict[tuple[str, str], dict[tuple[str, str], bytes | None]] = field(default_factory=dict)
    written: dict[tuple[str, EntryId, bytes], int] = field(default_factory=dict)  # -> order of the write
    writes: int = 0
    per_network: dict[str, int] = field(default_factory=dict)

    def record(self, event: TableEvent) -> None:
        self.writes += 1
        self.per_network[event.network] = self.per_network.get(event.network, 0) + 1
        table = self.own.setdefault((event.owner, event.network), {})
        table[(event.table, event.key)] = None if event.deleted else event.value
        if not event.deleted:
            self.written.setdefault((event.owner, (event.network, event.table, event.key), event.value), self.writes)

    def delete_all(self, owner: str, network: str | None = None) -> None:
        """The owner's entries (of one network, or all) are deleted: a detach, or a new life."""
        for (who, net), table in self.own.items():
            if who == owner and network in (None, net):
                for key in table:
                    table[key] = None

    def order_of(self, event: TableEvent) -> int | None:
        """When this value was written (the order of the write), or None: its owner never wrote it."""
        return self.written.get((event.owner, (event.network, event.table, event.key), event.value))

    def expected(self, network: str, owners_present: Iterable[str]) -> dict[tuple[str, str], tuple[str, bytes]]:
        """The table every member of `network` must hold, given the owners up and attached to it."""
        result = {}
        for owner in owners_present:
            for key, value in self.own.get((owner, network), {}).items():
                if value is not None:
                    result[key] = (owner, value)
        return result


@dataclass(slots=True)
class Observer:
    """Sees every visible change at every node as it happens; checks the safety invariants there.

    - scope: a node shows an entry only of a network it is attached to;
    - unwritten-value: a node never shows a value its owner never wrote;
    - resurrection: a node that saw an owner delete a version never again shows that version or
      an older one of the same key (older in the order the owner wrote them). "A node" is one
      process: a restarted one has seen nothing (others' entries are soft state), but leaving and
      re-joining a network does not make a node forget the deletes it saw there;
    - stale-update: a node never shows an older version of a key than one it showed before (a
      lost update), leaving and re-joining networks included; a restarted process has seen nothing.
    """

    truth: GroundTruth
    clock_skew: dict[str, float] = field(default_factory=dict)  # a writer's wall clock ahead of virtual time
    latencies: list[float] = field(default_factory=list)
    last_change: dict[tuple[str, str], float] = field(default_factory=dict)  # (node, network) -> time
    violations: list[Violation] = field(default_factory=list)
    _deleted: dict[tuple[str, EntryId], int] = field(default_factory=dict)  # (node, entry) -> order deleted
    _shown: dict[tuple[str, EntryId], int] = field(default_factory=dict)  # (node, entry) -> newest order shown
    max_violations: int = 50

    def violate(self, invariant: str, at: float, node: str, **detail: Any) -> None:
        if len(self.violations) < self.max_violations:
            self.violations.append(Violation(invariant, at, node, detail))

    @property
    def resurrections(self) -> list[Violation]:
        return [v for v in self.violations if v.invariant == "resurrection"]

    def restarted(self, node: str) -> None:
        """A new process of `node`: what the last one saw is gone with it."""
        for seen in [k for k in self._deleted if k[0] == node]:
            del self._deleted[seen]
        for seen in [k for k in self._shown if k[0] == node]:
            del self._shown[seen]

    def on_change(self, node: str, change: Change, attached: bool) -> None:
        self.last_change[(node, change.network)] = change.at
        entry = (change.network, change.table, change.key)
        if change.after is None:
            if change.deleted and change.before is not None:
                order = self.truth.order_of(change.before)
                if order is not None:
                    self._deleted[(node, entry)] = max(self._deleted.get((node, entry), 0), order)
            return
        event = change.after
        if not attached:
            self.violate("scope", change.at, node, entry=list(entry), owner=event.owner)
        order = self.truth.order_of(event)
        if order is None:
            shown = event.value.decode(errors="replace")
            self.violate("unwritten-value", change.at, node, entry=list(entry), owner=event.owner, value=shown)
            return
        if event.owner != node:  # the writer's own copy has no delivery latency
            self.latencies.append(change.at - event.wall_ms / 1000 + self.clock_skew.get(event.owner, 0.0))
        shown = self._shown.get((node, entry), 0)
        if order < shown:
            self.violate("stale-update", change.at, node, entry=list(entry), owner=event.owner,
                         write_order=order, newer_shown_order=shown)  # fmt: skip
        self._shown[(node, entry)] = max(shown, order)
        deleted = self._deleted.get((node, entry))
        if deleted is not None and order <= deleted:
            self.violate(
                "resurrection",
                change.at,
                node,
                entry=list(entry),
                owner=event.owner,
                value=event.value.decode(errors="replace"),
                lamport=event.lamport,
                write_order=order,
                deleted_write_order=deleted,
            )


def compare(
    expected: dict[tuple[str, str], tuple[str, bytes]], actual: dict[tuple[str, str], tuple[str, bytes]]
) -> tuple[list[str], list[str]]:
    """(missing, unexpected) entry names of one node's table against the truth."""
    missing = [f"{t}/{k}" for (t, k), v in expected.items() if actual.get((t, k)) != v]
    unexpected = [f"{t}/{k}" for (t, k) in actual.keys() - expected.keys()]
    return missing, unexpected
