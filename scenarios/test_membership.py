"""Cluster membership over SWIM on the lab: everyone sees everyone; a departed agent is seen
leaving, and seen back when it returns."""

from __future__ import annotations

import asyncio

import pytest

from lab.checker import Checker, wait_for
from lab.fleet import Fleet
from lab.inventory import load
from lab.nemesis import Nemesis


@pytest.mark.lab
def test_membership_converges_and_follows_a_stop_and_start(lab_inventory):
    async def run() -> None:
        async with Fleet(load(lab_inventory)) as fleet:
            checker = Checker(fleet, {})
            await wait_for(checker.membership_converged, 60, "every host to see every host alive")
            victim = sorted(fleet.hosts)[-1]
            nemesis = Nemesis(fleet)
            await nemesis.pause(victim)
            try:

                async def everyone_else_sees_it_gone() -> bool:
                    views = await fleet.each(
                        lambda h: fleet.api(h, "GET", "/members"), [h for h in fleet.hosts if h != victim]
                    )
                    return all(any(m["name"] == victim and m["state"] == "dead" for m in v) for v in views.values())

                await wait_for(everyone_else_sees_it_gone, 30, f"every other host to declare {victim} dead")
            finally:
                await nemesis.heal_all()  # resumes it
            await wait_for(checker.membership_converged, 60, f"{victim} to be alive everywhere again")

    asyncio.run(run())
