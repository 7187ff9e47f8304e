"""What a simulated run must show: per network, every live member holds exactly the ground truth.

The ground truth is the log of writes the workload made. The checker also records, for every
node, when each entry version first became visible there (delivery latency) and watches the safety
invariants at every step: no node outside a network ever receives or stores its entries, and no
entry comes back after a delete that the node had already applied.
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


@dataclass(slots=True)
class GroundTruth:
    """The last write to every entry, as the workload issued it."""

    last: dict[EntryId, TableEvent] = field(default_factory=dict)
    writes: int = 0
    per_network: dict[str, int] = field(default_factory=dict)

    def record(self, event: TableEvent) -> None:
        self.writes += 1
        self.per_network[event.network] = self.per_network.get(event.network, 0) + 1
        self.last[(event.network, event.table, event.key)] = event

    def expected(self, network: str, owners_alive: Iterable[str]) -> dict[tuple[str, str], tuple[str, bytes]]:
        alive = set(owners_alive)
        return {
            (table, key): (event.owner, event.value)
            for (net, table, key), event in self.last.items()
            if net == network and not event.deleted and event.owner in alive
        }


@dataclass(slots=True)
class Observer:
    """Collects every visible change at every node, as it happens."""

    latencies: list[float] = field(default_factory=list)
    last_change: dict[tuple[str, str], float] = field(default_factory=dict)  # (node, network) -> time
    resurrections: list[dict[str, Any]] = field(default_factory=list)
    _deleted_at: dict[tuple[str, EntryId], int] = field(default_factory=dict)

    def on_change(self, node: str, change: Change) -> None:
        self.last_change[(node, change.network)] = change.at
        entry = (change.network, change.table, change.key)
        if change.after is None:
            assert change.before is not None
            self._deleted_at[(node, entry)] = max(self._deleted_at.get((node, entry), 0), change.before.lamport)
            return
        event = change.after
        if event.owner != node:  # the writer's own copy has no delivery latency
            self.latencies.append(change.at - event.wall_ms / 1000)
        deleted = self._deleted_at.get((node, entry))
        if deleted is not None and event.lamport < deleted:
            self.resurrections.append(
                {"node": node, "entry": list(entry), "lamport": event.lamport, "deleted_at_lamport": deleted}
            )


def compare(
    expected: dict[tuple[str, str], tuple[str, bytes]], actual: dict[tuple[str, str], tuple[str, bytes]]
) -> tuple[list[str], list[str]]:
    """(missing, unexpected) entry names of one node's table against the truth."""
    missing = [f"{t}/{k}" for (t, k), v in expected.items() if actual.get((t, k)) != v]
    unexpected = [f"{t}/{k}" for (t, k) in actual.keys() - expected.keys()]
    return missing, unexpected
