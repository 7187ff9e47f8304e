"""Transmit-limited broadcast queues, as memberlist's TransmitLimitedQueue.

Each queued event is sent a limited number of times (`Config.retransmit_limit`), fewest-sent and
newest first; a newer event for the same key replaces the older one, which is then never sent again.
Events are stored encoded, so packing a datagram is concatenation.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(slots=True)
class _Item:
    key: Hashable
    payload: bytes
    transmits: int
    order: int


class BroadcastQueue:
    """Pending events of one scope (the cluster, or one network)."""

    def __init__(self, max_items: int | None = None) -> None:
        # _levels[t] holds the items sent t times, in arrival order (dicts keep insertion order).
        self._levels: list[dict[int, _Item]] = [{}]
        self._by_key: dict[Hashable, _Item] = {}
        self._order = 0
        self.max_items = max_items
        self.dropped = 0  # events pruned because the queue was full (they travel by sync instead)

    def __len__(self) -> int:
        return len(self._by_key)

    def put(self, key: Hashable, payload: bytes) -> None:
        """Queue an event; one already queued under `key` is superseded and never sent again."""
        old = self._by_key.pop(key, None)
        if old is not None:
            del self._levels[old.transmits][old.order]
        self._order += 1
        item = _Item(key, payload, 0, self._order)
        self._by_key[key] = item
        self._levels[0][item.order] = item
        if self.max_items is not None and len(self._by_key) > self.max_items:
            self._prune(len(self._by_key) - self.max_items)

    def _prune(self, count: int) -> None:
        # Drop the most-sent first (they have had their chance), oldest first within a level.
        for level in reversed(self._levels):
            while level and count:
                order = next(iter(level))
                item = level.pop(order)
                del self._by_key[item.key]
                self.dropped += 1
                count -= 1
            if not count:
                return

    def take(self, space: int, limit: int, per_message_overhead: int = 0) -> list[bytes]:
        """Encoded events totalling at most `space` bytes, each counted as sent once more.

        `limit` is how many times an event is sent before it leaves the queue; it is passed in
        because it depends on the scope's current size.
        """
        chosen: list[_Item] = []
        left = space
        for level in self._levels:
            if left <= per_message_overhead:
                break
            for item in reversed(level.values()):  # newest first: fresh news spreads first
                size = len(item.payload) + per_message_overhead
                if size <= left:
                    chosen.append(item)
                    left -= size
                    if left <= per_message_overhead:
                        break
        # Move on oldest first, so that each level stays (roughly) in arrival order.
        for item in sorted(chosen, key=lambda i: i.order):
            del self._levels[item.transmits][item.order]
            item.transmits += 1
            if item.transmits >= limit:
                del self._by_key[item.key]
                continue
            if item.transmits == len(self._levels):
                self._levels.append({})
            self._levels[item.transmits][item.order] = item
        return [item.payload for item in chosen]

    def clear(self) -> None:
        self._levels = [{}]
        self._by_key.clear()
