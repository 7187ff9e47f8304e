"""A run that cannot converge still tells the whole story: a deliberately broken experiment (one
member's agent stopped mid-churn) must end FAIL with results/<run-id>/ holding where it stopped
and why, the evidence from every host that answers, the history, and every agent's log."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from lab.experiment import run_lab
from lab.fleet import Fleet, FleetError
from lab.inventory import load
from lab.nemesis import signal_agent
from lab.spec import parse

pytestmark = [pytest.mark.lab]
NETWORK = "ev-net"


async def stop_once_churn_starts(fleet: Fleet, victim: str, watch: str) -> None:
    """SIGSTOP the victim's agent as soon as `watch` holds an entry of the network, once the run
    has prepared it empty (a previous run's entries must not trigger it early)."""
    prepared = False
    while True:
        try:
            held = [n["entries"] for n in await fleet.api(watch, "GET", "/networks") if n["network"] == NETWORK]
            prepared = prepared or held == [0]
            if prepared and held and held[0]:
                await fleet.run(victim, signal_agent("STOP"))
                return
        except FleetError:
            pass
        await asyncio.sleep(0.05)


def test_a_run_that_cannot_converge_leaves_its_evidence(lab_inventory, seed, tmp_path, progress):
    spec = parse(
        {"name": "broken", "description": "one member stopped mid-churn", "networks": {NETWORK: "all"},
         # 1,000 per writer at 100/s: a batch of 500 at once, the second 5 s later (ctl churn paces
         # between batches), so the victim is surely stopped before the second: it cannot converge.
         "phases": [{"name": "stuck", "churn": {"create": 2000, "writers": 2, "rate": 100}, "within": 5}]},
        "broken",
    )  # fmt: skip

    async def run() -> dict:
        async with Fleet(load(lab_inventory)) as fleet:
            names = sorted(fleet.hosts)
            victim = names[-1]
            stopper = asyncio.create_task(stop_once_churn_starts(fleet, victim, names[0]))
            try:
                return {"victim": victim, **await run_lab(spec, lab_inventory, seed, tmp_path, progress)}
            finally:
                stopper.cancel()
                await fleet.run(victim, signal_agent("CONT"), check=False)

    result = asyncio.run(run())
    victim = result["victim"]
    assert not result["passed"]
    assert result["verdict_line"].startswith("FAIL: stopped while phase stuck: waiting")
    assert victim in result["verdict"]["unreachable"]
    out = Path(result["report"]).parent
    saved = json.loads((out / "results.json").read_text())
    assert saved["stopped"]["why"].startswith("timed out after 5 s")
    assert {op["type"] for op in saved["history"]} >= {"invoke", "ok"}
    assert "Stopped while phase stuck" in (out / "report.html").read_text()
    logs = sorted(p.parent.name for p in out.glob("hosts/*/agent.log"))
    assert logs == sorted(result["hosts"])
    assert " INFO " in (out / "hosts" / victim / "agent.log").read_text()  # its log lines, not an error
    assert (out / "timeline.png").stat().st_size > 0
