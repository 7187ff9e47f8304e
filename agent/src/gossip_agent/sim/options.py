"""Every knob of a simulated run in one place, printed at start so a run can be replayed."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .partitions import SHAPES as PARTITION_SHAPES


class OptionError(ValueError):
    """A simulation option that makes no sense; the message says which and why."""


@dataclass(frozen=True, slots=True)
class PartitionSpec:
    shape: str  # one of partitions.SHAPES
    start: float  # virtual seconds
    end: float
    symmetric: bool = True  # False: only traffic from the first group to the rest is dropped

    def __post_init__(self) -> None:
        if self.shape not in PARTITION_SHAPES:
            raise OptionError(f"partition shape {self.shape!r} unknown; expected one of {', '.join(PARTITION_SHAPES)}")
        if not 0 <= self.start < self.end:
            raise OptionError(f"partition window {self.start}s-{self.end}s must start before it ends")

    @classmethod
    def parse(cls, text: str) -> PartitionSpec:
        """`halves:5s-15s`, `isolate:2-8:asym`."""
        match = re.fullmatch(r"([a-z-]+):([\d.]+)s?-([\d.]+)s?(?::(sym|asym))?", text.strip())
        if not match:
            raise OptionError(f"partition {text!r} is not SHAPE:STARTs-ENDs[:sym|asym], e.g. halves:5s-15s")
        shape, start, end, kind = match.groups()
        return cls(shape, float(start), float(end), kind != "asym")


@dataclass(frozen=True, slots=True)
class CrashSpec:
    fraction: float  # of nodes, chosen by the seed (at least one)
    at: float
    restart_at: float | None = None
    graceful: bool = False  # a restart (SIGTERM: the Leave goes out first), not a crash (kill -9)

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise OptionError(f"crash fraction {self.fraction} must be in (0, 1]")
        if self.restart_at is not None and self.restart_at <= self.at:
            raise OptionError("a crashed node must restart after it crashed")

    @classmethod
    def parse(cls, text: str) -> CrashSpec:
        """`0.1@5s` or `0.1@5s-20s` (restart at 20 s)."""
        match = re.fullmatch(r"([\d.]+)@([\d.]+)s?(?:-([\d.]+)s?)?", text.strip())
        if not match:
            raise OptionError(f"crash {text!r} is not FRACTION@ATs[-RESTARTs], e.g. 0.1@5s-20s")
        fraction, at, restart = match.groups()
        return cls(float(fraction), float(at), float(restart) if restart else None)


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    network: str
    creates: int  # entries created in this network
    start: float = 1.0  # virtual seconds
    rate: float = 0.0  # creates per second, across writers; 0: all at once
    writers: int = 0  # how many members write (spread evenly); 0: every member
    delete_fraction: float = 0.0  # of the created entries, deleted after `delete_after` seconds
    delete_after: float = 2.0
    prefix: str = "ep-"  # keys are PREFIX000000, PREFIX000001, ...; distinct prefixes never collide

    def __post_init__(self) -> None:
        if self.creates < 0 or self.rate < 0 or self.writers < 0:
            raise OptionError("workload counts and rates must not be negative")
        if not 0 <= self.delete_fraction <= 1:
            raise OptionError(f"delete fraction {self.delete_fraction} must be within [0, 1]")


@dataclass(frozen=True, slots=True)
class SimOptions:
    seed: int = 1
    nodes: int = 10
    # network -> member node names; empty: one network "net-0" spanning every node
    networks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    profile: str = "lan"
    overrides: dict[str, float] = field(default_factory=dict)
    membership: str = "swim"  # swim | static (shared fixed view: cheap, for 10,000-node runs)
    latency_min: float = 0.0005  # one-way datagram latency, uniform in [min, max] seconds
    latency_max: float = 0.002
    # node -> seconds its wall clock is ahead of virtual time (which starts at 0: a wall clock is
    # never negative); it stamps deletes and times reaping
    clock_skew: dict[str, float] = field(default_factory=dict)
    loss: float = 0.0  # probability a datagram is dropped
    duplicate: float = 0.0  # probability a datagram arrives twice
    bandwidth: float = 125_000_000.0  # bytes per second of a stream (1 Gbit/s)
    connect_timeout: float = 1.0  # a stream to an unreachable node fails after this long
    partitions: tuple[PartitionSpec, ...] = ()
    crashes: tuple[CrashSpec, ...] = ()
    workloads: tuple[WorkloadSpec, ...] = ()
    liveness_bound: float = 60.0  # seconds after the last fault or write within which all must converge
    check_interval: float = 0.05  # how often convergence is checked, virtual seconds
    max_time: float = 600.0

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise OptionError("a simulation needs at least one node")
        if self.membership not in ("swim", "static"):
            raise OptionError(f"membership {self.membership!r} unknown; expected swim or static")
        for name, value in (("loss", self.loss), ("duplicate", self.duplicate)):
            if not 0 <= value < 1:
                raise OptionError(f"{name} {value} must be within [0, 1)")
        if not 0 <= self.latency_min <= self.latency_max:
            raise OptionError("latency must satisfy 0 <= min <= max")
        names = set(self.node_names())
        if set(self.clock_skew) - names:
            raise OptionError(f"clock skew names unknown nodes: {', '.join(sorted(set(self.clock_skew) - names))}")
        if any(skew < 0 for skew in self.clock_skew.values()):
            raise OptionError("clock skew must be >= 0 (seconds a node's clock is ahead)")
        for network, members in self.networks.items():
            unknown = set(members) - names
            if unknown:
                raise OptionError(f"network {network!r} names unknown nodes: {', '.join(sorted(unknown))}")
        for workload in self.workloads:
            if workload.network not in self.network_members():
                raise OptionError(f"workload names unknown network {workload.network!r}")

    def node_names(self) -> list[str]:
        width = len(str(self.nodes))
        return [f"n{i:0{width}d}" for i in range(1, self.nodes + 1)]

    def network_members(self) -> dict[str, tuple[str, ...]]:
        if self.networks:
            return dict(self.networks)
        return {"net-0": tuple(self.node_names())}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["networks"] = {k: len(v) for k, v in self.network_members().items()}
        return data

    def describe(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def spread_networks(names: list[str], count: int, overlap: float = 0.2) -> dict[str, tuple[str, ...]]:
    """`count` networks over `names`: contiguous slices that overlap their neighbour by `overlap`,
    like the left network w1,w2,w3 and right network w3,w4,w5 (w3 in both)."""
    if count < 1:
        raise OptionError("at least one network")
    if count == 1:
        return {"net-0": tuple(names)}
    size = len(names)
    width = size / count
    result = {}
    for i in range(count):
        lo = int(i * width)
        hi = min(size, int((i + 1) * width + width * overlap) + 1)
        result[f"net-{i}"] = tuple(names[lo:hi])
    return result
