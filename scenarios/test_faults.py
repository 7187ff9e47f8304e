"""Faults on a running lab: kill -9 during churn, and 10 % packet loss. Nothing may be lost."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from lab.checker import Checker, wait_for
from lab.churn import Churn
from lab.fleet import Fleet
from lab.inventory import load
from lab.nemesis import Nemesis

pytestmark = [pytest.mark.lab]


async def _on_fresh_network(inventory: str, network: str, body: Callable[..., Awaitable[dict]]) -> dict:
    """Attach every host to `network`, run `body(fleet, checker, nemesis)`, always heal."""
    fleet = Fleet(load(inventory))
    await fleet.connect()
    nemesis = Nemesis(fleet)
    try:
        names = sorted(fleet.hosts)
        await fleet.each(lambda name: fleet.ctl(name, "attach", network))
        checker = Checker(fleet, {network: names})
        await wait_for(checker.membership_converged, 60, "all hosts alive everywhere")
        await wait_for(lambda: checker.converged({network: set()}), 60, f"{network} attached everywhere")
        await checker.baseline()
        return await body(fleet, checker, nemesis)
    finally:
        await nemesis.heal_all()
        await fleet.close()


def test_kill_during_churn_and_of_the_writer_loses_nothing(lab_inventory):
    async def body(fleet: Fleet, checker: Checker, nemesis: Nemesis) -> dict:
        churn = Churn(fleet)
        writing = asyncio.create_task(churn.create("h02", "kf-kill", 1500, "k-", rate=1000.0))
        await asyncio.sleep(0.5)
        await nemesis.kill("h05")  # a reader dies mid-churn; its supervisor restarts it
        await writing
        await wait_for(lambda: checker.converged(churn.truth), 60, "convergence after the reader's restart")
        await nemesis.kill("h02")  # now the writer: its entries come back from its journal
        await wait_for(lambda: checker.converged(churn.truth), 60, "convergence after the writer's restart")
        return await checker.verdict(churn.truth)

    verdict = asyncio.run(_on_fresh_network(lab_inventory, "kf-kill", body))
    assert verdict["valid"], verdict


def test_ten_percent_loss_converges(lab_inventory):
    async def body(fleet: Fleet, checker: Checker, nemesis: Nemesis) -> dict:
        await nemesis.loss(10)
        churn = Churn(fleet)
        await asyncio.gather(churn.create("h01", "kf-loss", 1000, "a-"), churn.create("h08", "kf-loss", 1000, "b-"))
        await wait_for(lambda: checker.converged(churn.truth), 60, "convergence under 10 % loss")
        return await checker.verdict(churn.truth)

    verdict = asyncio.run(_on_fresh_network(lab_inventory, "kf-loss", body))
    assert verdict["valid"], verdict
