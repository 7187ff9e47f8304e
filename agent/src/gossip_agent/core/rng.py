"""The randomness the core draws on, as a structural type.

The core never imports `random`: the caller hands in a seeded `random.Random` (which satisfies
this protocol), so the simulator can replay a run from its seed.
"""

from __future__ import annotations

from collections.abc import MutableSequence, Sequence
from typing import Protocol, TypeVar

T = TypeVar("T")


class Rng(Protocol):
    def random(self) -> float: ...

    def randint(self, a: int, b: int) -> int: ...

    def choice(self, seq: Sequence[T]) -> T: ...

    def sample(self, population: Sequence[T], k: int) -> list[T]: ...

    def shuffle(self, x: MutableSequence[T]) -> None: ...
