"""Generated runs: from one seed, a whole schedule of operations and faults a person can read.

The generator draws, from a seed and `Knobs`, the cluster (nodes, networks, who starts cold), the
protocol's config overrides, and a timed list of `Step`s: writes, updates, deletes and bursts of
each node's own entries; attach, detach and re-attach; crashes (journal kept), new lives (journal
lost), graceful leaves, restarts and pauses; partitions of every shape (overlapping, flapping,
asymmetric); loss, duplication, delay spikes (reordering), corrupted datagrams, replays of captured
datagrams, forged ones with absurd clocks, and forged sync frames. Every network fault and pause
carries its own end, and the simulator heals what is left at `quiet_at` (a node that is down then
stays down), so *any subset* of the steps is a valid schedule: that is what lets a failure be shrunk
by dropping steps.

The schedule is data (JSON), not code: the simulator replays it, a person reads it, and the lab
harness can run the same steps on real hosts. Nothing here reads a clock or the global random.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .partitions import SHAPES

OPERATIONS = ("write", "delete", "burst", "delete-burst", "attach", "detach")
PROCESS_FAULTS = ("crash", "new-life", "leave", "start", "pause")
NETWORK_FAULTS = ("partition", "loss", "duplicate", "delay", "corrupt", "replay", "forge")
KINDS = OPERATIONS + PROCESS_FAULTS + NETWORK_FAULTS
FORGERIES = ("lamport", "incarnation", "attachment", "sync-erase")
TABLE = "endpoints"


@dataclass(frozen=True, slots=True)
class Step:
    """One thing that happens at virtual time `at`. Which fields matter depends on `kind`:

    write/delete: node, network, key (a write's value is `value`); burst/delete-burst: node,
    network, key (a prefix), count; attach/detach: node, network; crash/new-life/leave/start: node;
    pause: node, until; partition: shape, order (nodes in the order the shape cuts), symmetric,
    until; loss/duplicate/corrupt: probability, until; delay: low, high (seconds), until;
    replay: count (captured datagrams delivered again); forge: forgery, node (the target),
    peer (named as the sender).
    """

    at: float
    kind: str
    node: str = ""
    network: str = ""
    key: str = ""
    value: str = ""
    count: int = 0
    until: float = 0.0
    shape: str = ""
    order: tuple[str, ...] = ()
    symmetric: bool = True
    probability: float = 0.0
    low: float = 0.0
    high: float = 0.0
    forgery: str = ""
    peer: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Only the fields that differ from the defaults: a schedule stays readable."""
        blank = Step(0.0, self.kind)
        data = {k: v for k, v in asdict(self).items() if k in ("at", "kind") or v != getattr(blank, k)}
        if "order" in data:
            data["order"] = list(self.order)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Step:
        data = dict(data)
        if "order" in data:
            data["order"] = tuple(data["order"])
        if data.get("kind") not in KINDS:
            raise ValueError(f"step kind {data.get('kind')!r} unknown; expected one of {', '.join(KINDS)}")
        return cls(**data)


@dataclass(frozen=True, slots=True)
class Schedule:
    seed: int
    nodes: tuple[str, ...]
    networks: dict[str, tuple[str, ...]]  # network -> the nodes configured into it at start
    cold: tuple[str, ...]  # nodes that are not running at time 0 and start by a `start` step
    overrides: dict[str, float]
    steps: tuple[Step, ...]
    quiet_at: float  # every fault healed, every node running, no more operations
    latency: tuple[float, float] = (0.0005, 0.002)
    clock_skew: dict[str, float] = field(default_factory=dict)  # node -> seconds its clock is ahead

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "nodes": list(self.nodes),
            "networks": {k: list(v) for k, v in self.networks.items()},
            "cold": list(self.cold),
            "overrides": dict(self.overrides),
            "quiet_at": self.quiet_at,
            "latency": list(self.latency),
            "clock_skew": dict(self.clock_skew),
            "steps": [s.to_dict() for s in self.steps],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        try:
            return cls(
                seed=int(data["seed"]),
                nodes=tuple(data["nodes"]),
                networks={k: tuple(v) for k, v in data["networks"].items()},
                cold=tuple(data.get("cold", ())),
                overrides={k: float(v) for k, v in data.get("overrides", {}).items()},
                steps=tuple(Step.from_dict(s) for s in data["steps"]),
                quiet_at=float(data["quiet_at"]),
                latency=tuple(float(x) for x in data.get("latency", (0.0005, 0.002)))[:2],  # type: ignore[arg-type]
                clock_skew={k: float(v) for k, v in data.get("clock_skew", {}).items()},
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"not a schedule: {exc}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def with_steps(self, steps: tuple[Step, ...]) -> Schedule:
        return replace(self, steps=steps)


@dataclass(frozen=True, slots=True)
class Knobs:
    """Ranges the generator draws from; every one has a sane default for a few-second sim run."""

    nodes: tuple[int, int] = (3, 9)
    networks: tuple[int, int] = (1, 3)
    active: tuple[float, float] = (6.0, 25.0)  # seconds of operations and faults
    operations: tuple[int, int] = (5, 60)
    burst: tuple[int, int] = (20, 600)  # entries in one burst
    faults: tuple[int, int] = (0, 8)
    cold_start: float = 0.3  # chance that some nodes start cold and join through seeds
    # A short tombstone TTL (some runs) lets replays and late copies meet reaped tombstones.
    tombstone_ttl: tuple[float, float] = (4.0, 40.0)
    kinds: tuple[str, ...] = field(default=KINDS)  # which step kinds may be drawn

    def __post_init__(self) -> None:
        for name in ("nodes", "networks", "active", "operations", "burst", "faults", "tombstone_ttl"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"knob {name} must be a range LOW <= HIGH, got {low}..{high}")
        if self.nodes[0] < 2:
            raise ValueError("knob nodes: a generated run needs at least 2 nodes")
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown step kinds {', '.join(sorted(unknown))}; expected some of {', '.join(KINDS)}")


class _Draw:
    """The generator's state while it writes one schedule."""

    def __init__(self, seed: int, knobs: Knobs) -> None:
        self.rng = random.Random(seed)
        self.knobs = knobs
        self.steps: list[Step] = []
        self.serial = 0

    def uniform(self, bounds: tuple[float, float]) -> float:
        return self.rng.uniform(*bounds)

    def randint(self, bounds: tuple[int, int]) -> int:
        return self.rng.randint(*bounds)

    def value(self, node: str) -> str:
        self.serial += 1
        return f"{node}#{self.serial}"


def generate(seed: int, knobs: Knobs | None = None) -> Schedule:
    """The schedule of seed `seed`: the same seed and knobs give the same schedule, always."""
    knobs = knobs or Knobs()
    d = _Draw(seed, knobs)
    rng = d.rng
    count = d.randint(knobs.nodes)
    width = len(str(count))
    nodes = tuple(f"n{i:0{width}d}" for i in range(1, count + 1))
    networks: dict[str, tuple[str, ...]] = {}
    for i in range(d.randint(knobs.networks)):
        members = sorted(rng.sample(nodes, rng.randint(min(2, count), count)))
        networks[f"net-{i}"] = tuple(members)
    cold: tuple[str, ...] = ()
    if rng.random() < knobs.cold_start:
        cold = tuple(sorted(rng.sample(nodes[1:], rng.randint(1, count - 1))))
    active = round(d.uniform(knobs.active), 3)
    overrides: dict[str, float] = {}
    if rng.random() < 0.4:
        overrides["tombstone_ttl"] = round(d.uniform(knobs.tombstone_ttl), 3)
    slow = rng.random() < 0.3
    latency = (0.0005, 0.002) if not slow else (0.001, round(rng.uniform(0.005, 0.05), 4))

    def at() -> float:
        return round(rng.uniform(0.5, active), 3)

    for node in cold:  # cold nodes join early, through seeds
        d.steps.append(Step(round(rng.uniform(0.0, min(3.0, active)), 3), "start", node=node))

    allowed = set(knobs.kinds)
    ops = [k for k in OPERATIONS if k in allowed]
    faults = [k for k in PROCESS_FAULTS + NETWORK_FAULTS if k in allowed and k != "start"]
    keys: dict[tuple[str, str], list[str]] = {}  # (node, network) -> keys written, for deletes
    bursts: dict[tuple[str, str], list[str]] = {}
    op_weights = {"write": 8, "delete": 4, "burst": 1, "delete-burst": 1, "attach": 1, "detach": 1}
    for _ in range(d.randint(knobs.operations) if ops else 0):
        kind = rng.choices(ops, [op_weights[k] for k in ops])[0]
        node = rng.choice(nodes)
        network = rng.choice(list(networks))
        when = at()
        mine = keys.setdefault((node, network), [])
        if kind == "write":
            # A new key, or an update or re-creation of one written before.
            key = rng.choice(mine) if mine and rng.random() < 0.4 else f"{node}.k{len(mine)}"
            if key not in mine:
                mine.append(key)
            d.steps.append(Step(when, "write", node=node, network=network, key=key, value=d.value(node)))
        elif kind == "delete":
            if not mine:
                continue
            d.steps.append(Step(when, "delete", node=node, network=network, key=rng.choice(mine)))
        elif kind == "burst":
            prefix = f"{node}.b{d.serial}."
            d.serial += 1
            bursts.setdefault((node, network), []).append(prefix)
            d.steps.append(Step(when, "burst", node=node, network=network, key=prefix, count=d.randint(knobs.burst)))
        elif kind == "delete-burst":
            mine_bursts = bursts.get((node, network))
            if not mine_bursts:
                continue
            d.steps.append(Step(when, "delete-burst", node=node, network=network, key=rng.choice(mine_bursts)))
        elif kind == "detach":
            d.steps.append(Step(when, "detach", node=node, network=network))
            # Re-attach after a random delay, zero included: the moby#47728 shape.
            back = when + rng.choice((0.0, 0.0, round(rng.expovariate(1 / 2.0), 3)))
            if rng.random() < 0.8:
                d.steps.append(Step(round(back, 3), "attach", node=node, network=network))
        else:
            d.steps.append(Step(when, "attach", node=node, network=network))

    for _ in range(d.randint(knobs.faults) if faults else 0):
        kind = rng.choice(faults)
        when = at()
        until = round(min(active, when + rng.expovariate(1 / 4.0) + 0.1), 3)
        node = rng.choice(nodes)
        if kind in ("crash", "new-life", "leave"):
            d.steps.append(Step(when, kind, node=node))
            if rng.random() < 0.8:  # else it stays down: its entries must be withdrawn everywhere
                d.steps.append(Step(until, "start", node=node))
        elif kind == "pause":
            d.steps.append(Step(when, "pause", node=node, until=until))
        elif kind == "partition":
            order = list(nodes)
            rng.shuffle(order)
            shape = rng.choice(SHAPES)
            flaps = 1 if rng.random() < 0.7 else rng.randint(2, 5)
            span = (until - when) / flaps
            for i in range(flaps):  # flapping: the same cut, on and off
                start = round(when + i * span, 3)
                end = round(start + span * rng.uniform(0.3, 0.9), 3)
                d.steps.append(
                    Step(start, "partition", shape=shape, order=tuple(order), symmetric=rng.random() < 0.6, until=end)
                )
        elif kind in ("loss", "duplicate", "corrupt"):
            d.steps.append(Step(when, kind, probability=round(rng.uniform(0.02, 0.4), 3), until=until))
        elif kind == "delay":
            high = round(rng.uniform(0.01, 0.5), 4)
            d.steps.append(Step(when, "delay", low=round(high * rng.random(), 4), high=high, until=until))
        elif kind == "replay":
            d.steps.append(Step(when, "replay", count=rng.randint(1, 200)))
        else:
            peer = rng.choice([n for n in nodes if n != node])
            d.steps.append(Step(when, "forge", forgery=rng.choice(FORGERIES), node=node, peer=peer))

    if rng.random() < 0.4:
        # Syncs merged a few entries per tick, over many ticks, meet every other step mid-merge.
        overrides["sync_slice_entries"] = rng.choice((1, 3, 16, 64))
    steps = tuple(sorted(d.steps, key=lambda s: s.at))
    # Drawn last, so that adding it left every earlier draw of a seed as it was. Clocks a second or
    # two apart stamp writes, restored tombstones and new lives' clocks differently (the TTLs drawn
    # above are under REAP_FLOOR, so reaping by wall time itself is left to the unit tests).
    skew = {n: round(rng.uniform(0.0, 2.0), 3) for n in nodes} if rng.random() < 0.3 else {}
    return Schedule(seed, nodes, networks, cold, overrides, steps, round(active + 0.5, 3), latency, skew)
