"""Seed sweeps of generated runs, after TigerBeetle's VOPR: many seeds on every core, a verdict per
seed, and for each failure the replay command, the first violated invariant and a shrunk schedule.

A failing seed is shrunk by dropping steps (delta debugging: halves, then quarters, down to single
steps) and halving bursts while the run still fails with the same invariant; any subset of a
schedule's steps is itself a valid schedule (see `schedule`), so every candidate is runnable.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .schedule import Knobs, Schedule, Step, generate
from .simulator import Simulator

_DONE = object()


@dataclass(frozen=True, slots=True)
class Outcome:
    """The verdict on one schedule."""

    seed: int
    valid: bool
    violation: dict[str, Any] | None  # the first violated invariant, with its evidence
    steps: int
    nodes: int
    virtual_time: float
    wall_seconds: float
    views: dict[str, Any] | None = None  # what every node holds of the entry involved

    @property
    def invariant(self) -> str | None:
        return None if self.violation is None else str(self.violation["invariant"])


def run_schedule(schedule: Schedule) -> Outcome:
    started = time.perf_counter()
    sim = Simulator.from_schedule(schedule)
    result = sim.run()
    violation = result["violation"]
    views = None
    if violation is not None and "entry" in violation:
        network, table, key = violation["entry"]
        views = {}
        for name, node in sim.nodes.items():
            state = node.networks.get(network)
            entry = state.table.get(table, key) if state else None
            views[name] = None if entry is None else {
                "owner": entry.event.owner,
                "lamport": entry.event.lamport,
                "deleted": entry.event.deleted,
                "withdrawn": entry.withdrawn,
                "value": entry.event.value.decode(errors="replace"),
                "running": name not in sim.crashed,
            }  # fmt: skip
    return Outcome(
        schedule.seed,
        bool(result["valid"]),
        violation,
        len(schedule.steps),
        len(schedule.nodes),
        result["virtual_time"],
        time.perf_counter() - started,
        views,
    )


def run_seed(seed: int, knobs: Knobs) -> Outcome:
    return run_schedule(generate(seed, knobs))


def shrink(schedule: Schedule, invariant: str, max_runs: int = 400, max_seconds: float = 120.0) -> tuple[Schedule, int]:
    """The smallest schedule found that still fails with `invariant`, and how many runs it took."""
    deadline = time.monotonic() + max_seconds
    runs = 0

    def fails(steps: list[Step]) -> bool:
        nonlocal runs
        runs += 1
        return run_schedule(schedule.with_steps(tuple(steps))).invariant == invariant

    def budget_left() -> bool:
        return runs < max_runs and time.monotonic() < deadline

    steps = list(schedule.steps)
    parts = 2
    while steps and budget_left():
        size = max(1, -(-len(steps) // parts))
        for start in range(0, len(steps), size):
            candidate = steps[:start] + steps[start + size :]
            if not budget_left():
                break
            if fails(candidate):
                steps = candidate
                parts = max(parts - 1, 2)
                break
        else:
            if size == 1:
                break
            parts = min(len(steps), parts * 2)
    # Smaller bursts: halve each while the failure stays.
    for index in range(len(steps)):
        while steps[index].kind == "burst" and steps[index].count > 1 and budget_left():
            smaller = [*steps[:index], replace(steps[index], count=steps[index].count // 2), *steps[index + 1 :]]
            if not fails(smaller):
                break
            steps = smaller
    return schedule.with_steps(tuple(steps)), runs


def parse_seeds(text: str) -> list[int]:
    """`7`, `1-1000`, `3,9,20-25`."""
    seeds: list[int] = []
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high) if dash else int(low)
        except ValueError:
            raise ValueError(f"seeds {text!r}: expected N, N-M or a comma list of them, e.g. 1-1000") from None
        if first < 0 or last < first:
            raise ValueError(f"seeds {part!r}: a range must run from a low to a high seed, none negative")
        seeds.extend(range(first, last + 1))
    return seeds


def _run_seed_job(job: tuple[int, Knobs]) -> Outcome:
    return run_seed(*job)


def _shrink_job(job: tuple[int, Knobs, str]) -> tuple[int, Schedule, int, float]:
    seed, knobs, invariant = job
    started = time.perf_counter()
    shrunk, runs = shrink(generate(seed, knobs), invariant)
    return seed, shrunk, runs, time.perf_counter() - started


@dataclass(slots=True)
class Sweep:
    """The results of a sweep, as they come in."""

    outcomes: list[Outcome]
    wall_seconds: float
    shrunk: dict[int, tuple[Schedule, int, float]]  # seed -> (schedule, runs, seconds)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.valid]

    def by_invariant(self) -> dict[str, list[int]]:
        classes: dict[str, list[int]] = {}
        for outcome in self.failures:
            classes.setdefault(outcome.invariant or "unknown", []).append(outcome.seed)
        return classes


def _pool_map(
    fn: Callable[[Any], Any], jobs: Iterable[Any], workers: int, go_on: Callable[[], bool] = lambda: True
) -> Iterator[Any]:
    """fn over jobs on `workers` processes, results in job order; no new job starts once `go_on()`
    is false (a time budget), and only a few run ahead of the results read."""
    if workers <= 1:
        for job in jobs:
            if not go_on():
                return
            yield fn(job)
        return
    with ProcessPoolExecutor(workers) as pool:
        pending: deque[Future[Any]] = deque()
        queue = iter(jobs)
        while True:
            while len(pending) < 4 * workers and go_on():
                job = next(queue, _DONE)
                if job is _DONE:
                    break
                pending.append(pool.submit(fn, job))
            if not pending:
                return
            yield pending.popleft().result()


def sweep(
    seeds: list[int],
    knobs: Knobs,
    workers: int = 0,
    time_budget: float | None = None,
    shrink_failures: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Sweep:
    """Run every seed (until `time_budget` seconds, if given), then shrink each failure."""
    workers = workers or os.cpu_count() or 1
    started = time.perf_counter()
    outcomes: list[Outcome] = []
    next_report = started + 2.0

    def within_budget() -> bool:
        return time_budget is None or time.perf_counter() - started < time_budget

    for outcome in _pool_map(_run_seed_job, [(s, knobs) for s in seeds], workers, within_budget):
        outcomes.append(outcome)
        if progress is not None and time.perf_counter() >= next_report:
            next_report = time.perf_counter() + 2.0
            elapsed = time.perf_counter() - started
            failed = sum(1 for o in outcomes if not o.valid)
            progress(f"{len(outcomes)}/{len(seeds)} seeds, {failed} failed, {len(outcomes) / elapsed:.1f} seeds/s")
    result = Sweep(outcomes, time.perf_counter() - started, {})
    if shrink_failures and result.failures:
        if progress is not None:
            progress(f"shrinking {len(result.failures)} failing schedule(s)")
        jobs = [(o.seed, knobs, o.invariant or "") for o in result.failures]
        for seed, shrunk, runs, seconds in _pool_map(_shrink_job, jobs, workers):
            result.shrunk[seed] = (shrunk, runs, seconds)
    return result


def trace(outcome: Outcome, knobs: Knobs, replay: str, shrunk: tuple[Schedule, int, float] | None) -> dict[str, Any]:
    """Everything a person needs to understand and replay one failure, as JSON."""
    data: dict[str, Any] = {
        "seed": outcome.seed,
        "replay": replay,
        "violation": outcome.violation,
        "views": outcome.views,
        "knobs": {k: getattr(knobs, k) for k in knobs.__slots__},  # type: ignore[attr-defined]
        "schedule": generate(outcome.seed, knobs).to_dict(),
    }
    if shrunk is not None:
        schedule, runs, seconds = shrunk
        data["shrunk"] = {"runs": runs, "seconds": round(seconds, 2), "schedule": schedule.to_dict()}
    return data


def write_trace(directory: Path, data: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"seed-{data['seed']}.json"
    path.write_text(json.dumps(data, indent=1, default=str))
    return path
