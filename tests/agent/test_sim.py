"""Randomized runs of the whole protocol in the simulator: safety during faults, liveness after."""

from __future__ import annotations

import json

import pytest

from gossip_agent.cli import main
from gossip_agent.sim import CrashSpec, PartitionSpec, SimOptions, Simulator, WorkloadSpec

pytestmark = pytest.mark.sim


def run(**kwargs):
    options = SimOptions(**kwargs)
    print(f"seed={options.seed} options={options.describe()}")  # shown on failure, for replay
    simulator = Simulator(options)
    return simulator, simulator.run()


def assert_valid(result):
    shown = {k: result[k] for k in ("networks", "scope_leaks", "resurrections")}
    assert result["valid"], json.dumps(shown, default=str)
    for network in result["networks"].values():
        assert network["missing_count"] == 0
        assert network["unexpected_count"] == 0
    assert result["scope_leaks"] == 0
    assert result["resurrections"] == 0


def test_fifty_nodes_converge_under_ten_percent_loss():
    _, result = run(
        seed=11, nodes=50, loss=0.10, workloads=(WorkloadSpec("net-0", 2000, start=1.0, rate=500, delete_fraction=0.2),)
    )
    assert_valid(result)
    assert result["traffic"]["datagrams_dropped"]["loss"] > 0  # the fault really happened


def test_halves_partition_with_churn_on_both_sides_then_heal():
    sim, result = run(
        seed=5,
        nodes=40,
        partitions=(PartitionSpec("halves", 2.0, 25.0),),
        workloads=(WorkloadSpec("net-0", 1500, start=3.0, rate=150, delete_fraction=0.3, delete_after=2.0),),
    )
    assert_valid(result)
    assert result["traffic"]["datagrams_dropped"]["partition"] > 0
    assert result["networks"]["net-0"]["convergence_after_settle"] < 10.0  # generous: measured ~1 s
    assert result["traffic"]["syncs"].get("return", 0) > 0  # the heal was repaired by syncs with returners


def test_crashed_nodes_entries_vanish_everywhere():
    sim, result = run(
        seed=8, nodes=30, crashes=(CrashSpec(0.1, at=4.0),), workloads=(WorkloadSpec("net-0", 600, start=1.0),)
    )
    assert_valid(result)  # the expected tables exclude the crashed owners' entries
    crashed = sorted(sim.crashed)
    assert len(crashed) == 3
    for node in sim.nodes.values():
        if node.name not in sim.crashed:
            owners = {e.event.owner for e in node.networks["net-0"].table.visible()}
            assert not owners & set(crashed), node.name


def test_crashed_nodes_entries_return_when_they_restart():
    sim, result = run(
        seed=8,
        nodes=30,
        crashes=(CrashSpec(0.1, at=4.0, restart_at=20.0),),
        workloads=(WorkloadSpec("net-0", 600, start=1.0, delete_fraction=0.2, delete_after=1.0),),
    )
    assert_valid(result)
    assert not sim.crashed
    restarted = result["faults"][0]["nodes"]
    visible_owners = {e.event.owner for e in sim.nodes["n01"].networks["net-0"].table.visible()}
    assert set(restarted) <= visible_owners | {"n01"}


def test_overlapping_networks_never_leak():
    names = SimOptions(nodes=5).node_names()
    left, right = tuple(names[:3]), tuple(names[2:])
    sim, result = run(
        seed=3,
        nodes=5,
        networks={"left": left, "right": right},
        workloads=(WorkloadSpec("left", 300, start=1.0), WorkloadSpec("right", 300, start=1.0)),
    )
    assert_valid(result)
    both = sim.nodes[names[2]]
    assert set(both.networks) == {"left", "right"}
    assert "right" not in sim.nodes[names[0]].networks
    assert sim.nodes[names[0]].stats.get("dropped_out_of_scope", 0) == 0


def test_same_seed_same_trace_and_another_seed_another():
    kwargs = dict(nodes=20, loss=0.05, duplicate=0.02, workloads=(WorkloadSpec("net-0", 200, start=1.0, rate=100),))
    _, first = run(seed=42, **kwargs)
    _, again = run(seed=42, **kwargs)
    _, other = run(seed=43, **kwargs)
    assert first["trace_hash"] == again["trace_hash"]
    assert first["latency"] == again["latency"]
    assert first["trace_hash"] != other["trace_hash"]


def test_cli_runs_a_simulation_and_writes_json(tmp_path, capsys):
    out = tmp_path / "result.json"
    code = main(["sim", "--nodes", "12", "--networks", "2", "--endpoints", "200", "--seed", "4", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "PASS: seed 4" in printed
    assert json.loads(out.read_text())["valid"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--partition", "sideways:1s-2s"], "partition shape 'sideways' unknown"),
        (["--partition", "halves:5s-2s"], "must start before it ends"),
        (["--crash", "0.1@5s", "--membership", "static"], "crashes need membership=swim"),
        (["--json", "/nonexistent-dir/x.json", "--nodes", "3", "--endpoints", "3"], "cannot write"),
    ],
)
def test_cli_bad_options_are_one_clear_line_and_exit_2(args, message, capsys):
    assert main(["sim", *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_cli_rejects_malformed_numbers_through_argparse(capsys):
    with pytest.raises(SystemExit) as info:
        main(["sim", "--loss", "lots"])
    assert info.value.code == 2
    assert "expected a fraction" in capsys.readouterr().err
