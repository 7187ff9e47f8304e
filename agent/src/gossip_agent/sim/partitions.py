"""Partition shapes after Jepsen's nemeses, shared by the simulator and the lab's nftables nemesis.

A shape turns an ordered list of node names into groups and a `blocked(src, dst)` rule. The caller
chooses the order (the simulator shuffles with its seeded rng; the lab sorts, or shuffles for
`random-halves`), so this module holds no randomness.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

SHAPES = ("halves", "random-halves", "majority", "isolate", "minority-third", "bridge", "ring")


@dataclass(frozen=True, slots=True)
class Partition:
    shape: str
    groups: list[list[str]]
    blocked: Callable[[str, str], bool]  # True: a packet from src to dst is dropped


def partition(shape: str, names: Sequence[str], symmetric: bool = True) -> Partition:
    """Asymmetric: only traffic from the first group to the others is dropped (replies get through,
    requests do not): the shape of a one-way firewall or a broken route."""
    names = list(names)
    n = len(names)
    if shape not in SHAPES:
        raise ValueError(f"partition shape {shape!r} unknown; expected one of {', '.join(SHAPES)}")
    if n < 2:
        raise ValueError(f"a partition needs at least 2 nodes, not {n}")
    if shape == "ring":
        # majorities-ring: every node reaches the nodes near it on a ring, a majority in all,
        # and no two nodes see the same majority.
        position = {name: i for i, name in enumerate(names)}
        reach = max(1, math.ceil((n // 2) / 2))

        def far(src: str, dst: str) -> bool:
            d = abs(position[src] - position[dst])
            return min(d, n - d) > reach

        return Partition(shape, [names], far)
    if shape in ("halves", "random-halves"):
        groups = [names[: n // 2], names[n // 2 :]]
    elif shape == "majority":
        groups = [names[: n // 2 + 1], names[n // 2 + 1 :]]
    elif shape == "isolate":
        groups = [names[:1], names[1:]]
    elif shape == "minority-third":
        third = max(1, n // 3)
        groups = [names[:third], names[third:]]
    else:  # bridge: two halves, and one node in neither that reaches both
        bridge, rest = names[0], names[1:]
        groups = [rest[: len(rest) // 2], rest[len(rest) // 2 :], [bridge]]
    side = {name: index for index, group in enumerate(groups) for name in group}
    bridge_side = 2 if shape == "bridge" else -1

    def blocked(src: str, dst: str) -> bool:
        a, b = side[src], side[dst]
        if a == b or bridge_side in (a, b):
            return False
        return symmetric or a == 0

    return Partition(shape, groups, blocked)
