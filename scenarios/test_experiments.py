"""The shipped experiment specs: each parses, and each runs in the simulator (the big ones in
`make nightly`). Bad specs are refused with a message naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.experiment import main, run_sim, sim_options
from lab.spec import SpecError, load, parse

EXPERIMENTS = sorted((Path(__file__).parent / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_shipped_spec_parses_and_maps_to_the_simulator(path):
    spec = load(path)
    options = sim_options(spec, 12, spec.seed)
    assert set(options.network_members()) == set(spec.networks)
    assert options.workloads


@pytest.mark.sim
@pytest.mark.parametrize("name", ["smoke", "headline"])
def test_small_specs_hold_in_the_simulator(name):
    spec = load(Path(__file__).parent / "experiments" / f"{name}.yaml")
    result = run_sim(spec, spec.hosts, spec.seed, log=lambda _: None)
    assert result["valid"], result["verdict"]
    assert result["verdict"]["resurrected"] == 0


@pytest.mark.sim
@pytest.mark.scale
def test_swarm2k_spec_holds_in_the_simulator():
    spec = load(Path(__file__).parent / "experiments" / "swarm2k.yaml")
    result = run_sim(spec, spec.hosts, spec.seed, log=print)
    assert result["valid"], result["verdict"]


MINIMAL = {"name": "x", "networks": {"a": "all"}, "phases": [{"churn": {"create": 10}}]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"networks": {"a": "10%-5%"}}, "from < to"),
        ({"networks": {"a": "some"}}, "'all', 'A%-B%' or 'every K'"),
        ({"phases": [{"fault": {"partition": "thirds"}}]}, "partition shape 'thirds' unknown"),
        ({"phases": [{"fault": {"kill": 1, "loss": 5}}]}, "exactly one fault"),
        ({"phases": [{"churn": {"create": -1}}]}, "must not be negative"),
        ({"phases": [{"churn": {"create": 5, "delete": 1}}]}, "phases[0] cannot delete"),
        ({"phases": [{"churn": {"create": 5, "networks": ["b"]}}]}, "unknown network(s) b"),
        ({"phases": [{"churn": {"create": "many"}}]}, "'create' must be int"),
        ({"phases": [{"churn": {"containers": -1}}]}, "containers must not be negative"),
        ({"phases": [{"churn": {"containers": 40}}, {"churn": {"containers": 24}}]}, "64 containers per writer"),
        ({"extra": 1}, "unknown field(s) extra"),
        ({"targets": {"speed": 1}}, "unknown field(s) speed"),
    ],
)
def test_bad_specs_are_refused_by_name(change, message):
    with pytest.raises(SpecError) as caught:
        parse({**MINIMAL, **change}, "bad.yaml")
    assert message in str(caught.value)
    assert str(caught.value).startswith("bad.yaml")


def test_cli_reports_a_bad_spec_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnetworks: [a]\n")
    assert main([str(bad), "--mode", "sim"]) == 2
    assert "'networks' must be dict" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.yaml"), "--mode", "sim"]) == 2
    assert main([str(EXPERIMENTS[0]), "--mode", "lab", "--inventory", str(tmp_path / "none")]) == 2


def test_faults_only_the_lab_has_are_refused_in_sim():
    spec = parse({**MINIMAL, "phases": [{"churn": {"create": 5}}, {"fault": {"pause": 1}}]})
    with pytest.raises(SpecError, match="runs only in the lab"):
        sim_options(spec, 5, 1)


@pytest.mark.sim
def test_a_simulated_run_publishes_its_report(tmp_path, capsys):
    assert main([str(Path(__file__).parent / "experiments" / "smoke.yaml"), "--mode", "sim",
                 "--results-dir", str(tmp_path)]) == 0  # fmt: skip
    (run,) = tmp_path.iterdir()
    saved = json.loads((run / "results.json").read_text())
    assert saved["verdict_line"] == "PASS"
    page = (run / "report.html").read_text()
    assert page.count("<img") == 4
    # One row per network of the spec in the networks table.
    networks_table = page.split("<h2>Networks</h2>")[1].split("</table>")[0]
    assert networks_table.count("<tr><td>") == len(saved["networks"]) > 0, page
    assert "PASS: report" in capsys.readouterr().out
