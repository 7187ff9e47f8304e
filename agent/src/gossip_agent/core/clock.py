"""Lamport clock: one per node, shared by its attachments and every table it writes."""

from __future__ import annotations


class LamportClock:
    __slots__ = ("time",)

    def __init__(self, start: int = 0) -> None:
        self.time = start

    def tick(self) -> int:
        """Advance for a local write and return the new time."""
        self.time += 1
        return self.time

    def witness(self, seen: int) -> None:
        """Move past a time seen from a peer, so our next write orders after it."""
        if seen > self.time:
            self.time = seen
