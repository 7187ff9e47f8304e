"""pytest plugin of the lab harness (loaded with `-p lab.pytest_plugin`, see pyproject.toml).

    pytest scenarios                                  # builds its own 8-host local lab (prefix sgs)
    pytest scenarios --lab-size 50 -m "lab"           # a bigger one
    pytest scenarios --inventory inventories/prod     # real hosts, used as they are
    pytest scenarios --seed 42 --results-dir /tmp/r   # replay a seed; reports go there

The seed and the lab are printed in the header; every experiment's report lands under
--results-dir, and JUnit XML in <results-dir>/junit.xml unless --junitxml says otherwise.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import scenario
from .experiment import run_lab
from .playbook import ROOT, LabSpec, playbook
from .spec import Spec, parse

SCENARIO_LAB = ("sgs", "198.18.129.0/24")  # prefix and subnet of the lab the scenarios build
LAB_TESTS = pytest.StashKey[set[str]]()  # node ids of the tests marked `lab`


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lab", "Scoped Gossip Lab")
    group.addoption("--inventory", help="run lab scenarios on these hosts instead of building a local lab")
    group.addoption("--lab-size", type=int, default=8, help="hosts of the local lab the scenarios build (8)")
    group.addoption("--seed", type=int, default=1, help="seed of every random choice in the scenarios (1)")
    group.addoption("--results-dir", default=str(ROOT / "results"), help="where reports go (results/)")
    group.addoption("--generated-seeds", default="1", help="seeds of the generated lab runs: N, A-B or A,B,... (1)")
    group.addoption(
        "--require-lab",
        action="store_true",
        default=os.environ.get("CI", "").lower() == "true",
        help="a lab that cannot be built fails the lab tests instead of skipping them (default when CI=true)",
    )


@pytest.hookimpl(tryfirst=True)  # before junitxml reads its path
def pytest_configure(config: pytest.Config) -> None:
    for marker in (
        "lab: needs hosts: a local lab (root) or --inventory",
        "scale: big runs for `make nightly`, not `make test`",
        "partition: a partition nemesis runs",
    ):
        config.addinivalue_line("markers", marker)
    if config.getoption("--lab-size") < 2:
        raise pytest.UsageError("--lab-size must be at least 2")
    scenario.RESULTS_DIR = Path(config.getoption("--results-dir"))
    if getattr(config.option, "xmlpath", None) is None and hasattr(config.option, "xmlpath"):
        config.option.xmlpath = str(Path(config.getoption("--results-dir")) / "junit.xml")


def pytest_report_header(config: pytest.Config) -> list[str]:
    where = config.getoption("--inventory") or f"a local lab of {config.getoption('--lab-size')} hosts"
    return [f"lab: {where}; seed {config.getoption('--seed')}; results in {config.getoption('--results-dir')}"]


@pytest.fixture(scope="session")
def seed(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--seed"))


@pytest.fixture(scope="session")
def progress(request: pytest.FixtureRequest) -> Any:
    """Lines shown while a long phase runs, past pytest's output capture."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def say(text: str) -> None:
        if reporter is None or capture is None:
            return
        with capture.global_and_fixture_disabled():  # captured output would only show on failure
            reporter.write_line(f"    [{time.strftime('%H:%M:%S')}] {text}")

    return say


@pytest.fixture(scope="session")
def lab_inventory(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The inventory of --inventory, or of a local lab built for this session and always removed."""
    given = request.config.getoption("--inventory")
    if given:
        yield given
        return
    if os.geteuid() != 0:
        no_lab(request.config, "the local lab needs root (or pass --inventory)")
    prefix, subnet = SCENARIO_LAB
    size = request.config.getoption("--lab-size")
    lab = LabSpec(prefix, subnet, size, tmp_path_factory.mktemp("scenario-lab") / "hosts.yml")
    results = Path(request.config.getoption("--results-dir"))
    lab.prepare()
    try:
        _playbook(lab, "site.yml", results)
        yield str(lab.inventory)
    finally:
        _playbook(lab, "lab-down.yml", results)


def no_lab(config: pytest.Config, reason: str) -> None:
    """No lab can be had here: a skip, or with --require-lab (CI, `make nightly`) a failure, so a
    run that checked nothing cannot pass."""
    if config.getoption("--require-lab"):
        pytest.fail(f"{reason}; --require-lab (CI=true) makes this a failure")
    pytest.skip(reason)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "generated_seed" in metafunc.fixturenames:
        text = metafunc.config.getoption("--generated-seeds")
        try:
            seeds = [int(p) for p in text.split(",")] if "-" not in text else list(range(*_bounds(text)))
        except ValueError:
            raise pytest.UsageError(f"--generated-seeds {text!r}: expected N, A-B or A,B,...") from None
        metafunc.parametrize("generated_seed", seeds)


def _bounds(text: str) -> tuple[int, int]:
    low, high = (int(p) for p in text.split("-"))
    if low > high:
        raise ValueError(text)
    return low, high + 1


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    config.stash[LAB_TESTS] = {item.nodeid for item in items if item.get_closest_marker("lab")}


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """How many lab tests really ran: a green run of skipped scenarios must not look like a pass."""
    lab_tests = config.stash.get(LAB_TESTS, set())
    outcomes: dict[str, int] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "nodeid", None) in lab_tests and (report.when == "call" or outcome != "passed"):
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
    if outcomes:
        ran = outcomes.get("passed", 0) + outcomes.get("failed", 0)
        detail = ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items()))
        terminalreporter.write_line(f"lab tests: {ran} ran on hosts ({detail})")


def _playbook(lab: LabSpec, name: str, results: Path) -> None:
    """Run a playbook; on failure, its whole output goes to <results-dir>/<name>.log and the
    failure shows the failed tasks' lines and the end of stderr."""
    result = playbook(lab, name)
    if result.returncode != 0:
        results.mkdir(parents=True, exist_ok=True)
        log = results / f"{Path(name).stem}.log"
        log.write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
        failed = [line for line in result.stdout.splitlines() if line.startswith(("fatal:", "failed:", "ERROR!"))]
        pytest.fail(f"{name} failed (exit {result.returncode}; whole output in {log}):\n"
                    + "\n".join(failed[:20]) + f"\n{result.stderr[-2000:]}")  # fmt: skip


@pytest.fixture
def experiment(lab_inventory: str, seed: int, progress: Any, request: pytest.FixtureRequest) -> Any:
    """run(spec) -> result: an experiment spec (a dict as in YAML, or a Spec) on the lab, with its
    report written under --results-dir; the result carries the report's path."""
    results_dir = Path(request.config.getoption("--results-dir"))

    def run(spec: dict[str, Any] | Spec) -> dict[str, Any]:
        if isinstance(spec, dict):
            spec = parse(spec, request.node.name)
        result = asyncio.run(run_lab(spec, lab_inventory, seed, results_dir, progress))
        progress(f"{spec.name}: {result['verdict_line']}: {result['report']}")
        return result

    return run
