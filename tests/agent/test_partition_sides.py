"""Each side of a partition converges inside while cut off, whatever stalls one of its members.

Generated from seeds: a partition shape over a shuffled cluster, a writer on every side of two
or more, and one member paused for a while around the writes (a stalled process: starved of CPU,
a long fsync, a stopped VM). The model: BOUND after the writes and the resume, every member of a
side holds every write made on that side. A lab CI run failed this way: the writer's one peer on
a two-host side held nothing of its 150 writes after 30 s."""

from __future__ import annotations

import random
from dataclasses import fields

import pytest

from gossip_agent.core.config import Config, local
from gossip_agent.sim.partitions import partition
from gossip_agent.sim.schedule import Schedule, Step
from gossip_agent.sim.simulator import Simulator

LOCAL = {  # the lab's profile, which the CI scenarios run, as overrides of the default one
    f.name: getattr(local(), f.name) for f in fields(Config) if getattr(local(), f.name) != getattr(Config(), f.name)
}
SHAPES = ("halves", "random-halves", "majority", "minority-third", "isolate")
CUT_AT, WRITES_AT = 10.0, 10.3
BOUND = 8.0  # seconds; the periodic digest (10 s) must not be what mends a side
WRITES = 60


def side_lag(seed: int) -> tuple[float, str]:
    """Seconds from the writes and the resume until every side holds its own writes (inf if
    not within the partition), and what was drawn."""
    rng = random.Random(seed)
    count = rng.randint(4, 10)
    nodes = tuple(f"n{i:0{len(str(count))}d}" for i in range(1, count + 1))  # as the simulator names them
    order = list(nodes)
    rng.shuffle(order)
    shape = rng.choice(SHAPES)
    groups = [g for g in partition(shape, order).groups if len(g) > 1]
    writer_paused = rng.random() < 0.5
    paused = rng.choice(groups)[0] if writer_paused else rng.choice([n for g in groups for n in g])
    pause_at = WRITES_AT + rng.uniform(0.001, 0.03)  # mostly before its first gossip round
    resume_at = pause_at + rng.choice([3.0, 6.0, 12.0, 20.0])  # past a time window; past its death
    heal_at = resume_at + 4 * BOUND
    steps = [Step(2.0, "burst", node=n, network="net", key=f"before-{n}-", count=10) for n in nodes]
    steps += [Step(CUT_AT, "partition", shape=shape, order=tuple(order), until=heal_at)]
    steps += [Step(WRITES_AT, "burst", node=g[0], network="net", key=f"during-{g[0]}-", count=WRITES) for g in groups]
    steps += [Step(pause_at, "pause", node=paused, until=resume_at)]
    schedule = Schedule(seed, nodes, {"net": nodes}, (), LOCAL, tuple(steps), heal_at + 5)
    sim = Simulator.from_schedule(schedule)
    done: list[float] = []

    def check() -> None:
        if not done and all(holds(sim, g) for g in groups):
            done.append(sim.now)

    at = resume_at
    while at < heal_at:
        sim.call_at(at, check)
        at += 0.25
    sim.run()
    drawn = f"{len(nodes)} nodes, {shape} {[g for g in groups]}, {paused} paused {pause_at:.2f}-{resume_at:.2f}"
    return (done[0] - resume_at if done else float("inf")), drawn


def holds(sim: Simulator, group: list[str]) -> bool:
    """Every member of `group` holds every write its writer (the first) made in the partition."""
    writer = group[0]
    wanted = {f"during-{writer}-{i}" for i in range(WRITES)}
    tables = [sim.nodes[name].networks["net"].table for name in group]
    return all(wanted <= {e.event.key for e in table.visible() if e.event.owner == writer} for table in tables)


@pytest.mark.parametrize("seed", range(1, 61))
def test_every_side_converges_inside_though_a_member_stalls(seed):
    lag, drawn = side_lag(seed)
    print(f"seed {seed}: {drawn}: sides held their writes {lag:.2f} s after the resume")
    assert lag <= BOUND, f"seed {seed}: {drawn}: a side lacked its own writes {BOUND} s after the resume"
