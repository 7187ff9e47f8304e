"""Generated runs: the generator, the model checker, seed sweeps, shrinking, and the regressions they found.

Every schedule under `regressions/` was found by the generator (or written from a review's report)
and failed before its fix; each must pass now. A sweep of a few hundred seeds runs on every `make
test`; `make nightly` runs thousands (see the Makefile).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gossip_agent.cli import main
from gossip_agent.core.node import Node
from gossip_agent.sim import vopr
from gossip_agent.sim.schedule import Knobs, Schedule, generate

pytestmark = pytest.mark.sim

REGRESSIONS = sorted((Path(__file__).parent / "regressions").glob("*.json"))
SWEEP_SEEDS = "1-300"  # make test's share (~50 s); make vopr and make nightly run thousands


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.stem for p in REGRESSIONS])
def test_regression_schedule_passes(path):
    data = json.loads(path.read_text())
    outcome = vopr.run_schedule(Schedule.from_dict(data))
    assert outcome.valid, f"{path.name} (found by {data['found_by']}): {outcome.violation}"


def test_a_seed_gives_the_same_schedule_and_the_schedule_survives_json():
    first, again, other = generate(11), generate(11), generate(12)
    assert first == again
    assert first != other
    assert Schedule.from_dict(json.loads(first.to_json())) == first


def test_the_generator_draws_every_kind_of_step_over_many_seeds():
    kinds = {step.kind for seed in range(1, 200) for step in generate(seed).steps}
    forgeries = {step.forgery for seed in range(1, 200) for step in generate(seed).steps if step.kind == "forge"}
    assert kinds == set(Knobs().kinds)
    assert forgeries == {"lamport", "incarnation", "attachment", "sync-erase"}


def test_the_same_schedule_replays_bit_for_bit():
    schedule = generate(5)
    from gossip_agent.sim import Simulator

    first, second = Simulator.from_schedule(schedule).run(), Simulator.from_schedule(schedule).run()
    assert first["trace_hash"] == second["trace_hash"]


def test_sweep_of_generated_seeds_finds_nothing():
    result = vopr.sweep(vopr.parse_seeds(SWEEP_SEEDS), Knobs(), shrink_failures=True)
    report = {o.seed: (o.violation, result.shrunk.get(o.seed, (None,))[0]) for o in result.failures}
    assert not result.failures, json.dumps(
        {seed: {"violation": v, "shrunk": s.to_dict() if s else None} for seed, (v, s) in report.items()},
        default=str,
    )[:4000]


def test_generator_finds_and_shrinks_a_reintroduced_bug(monkeypatch):
    """Teeth: with the owner rule switched off (an owner adopts copies of its own entries again),
    a few dozen seeds find a failure, and it shrinks to a handful of steps."""
    monkeypatch.setattr(Node, "_answer_own", lambda self, state, event, now: None)
    monkeypatch.setattr(Node, "owner_ok", lambda self, network, owner: True)
    result = vopr.sweep(list(range(1, 41)), Knobs(), workers=1, shrink_failures=False)
    assert result.failures
    first = result.failures[0]
    shrunk, runs = vopr.shrink(generate(first.seed), first.invariant or "")
    print(f"seed {first.seed}: {first.invariant}, shrunk {first.steps} -> {len(shrunk.steps)} steps in {runs} runs")
    assert len(shrunk.steps) <= 6
    assert vopr.run_schedule(shrunk).invariant == first.invariant


def test_cli_random_sweep_and_schedule_replay(tmp_path, capsys):
    code = main(["sim", "--random", "--seeds", "1-4", "--jobs", "1", "--traces", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "PASS: 4 passed, 0 failed" in out
    schedule = tmp_path / "one.json"
    schedule.write_text(generate(3).to_json())
    assert main(["sim", "--schedule", str(schedule)]) == 0
    assert "PASS: seed 3" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--random", "--seeds", "9-2"], "a range must run from a low to a high seed"),
        (["--random", "--seeds", "x"], "expected N, N-M or a comma list"),
        (["--schedule", "/nonexistent/s.json"], "cannot read /nonexistent/s.json"),
    ],
)
def test_cli_generated_runs_bad_input_is_one_line(args, message, capsys):
    assert main(["sim", *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
