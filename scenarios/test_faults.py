"""Process faults during churn: kill -9, SIGSTOP/SIGCONT, graceful and rolling restarts, packet
loss and delay. Nothing may be lost or resurrected, and every network converges afterwards."""

from __future__ import annotations

import asyncio

import pytest

from lab.checker import Checker, wait_for
from lab.churn import Churn
from lab.fleet import Fleet
from lab.nemesis import Nemesis
from lab.scenario import check_on_fresh_network

pytestmark = [pytest.mark.lab]


def test_kill_during_churn_and_of_the_writer_loses_nothing(lab_inventory, seed):
    async def body(fleet: Fleet, checker: Checker, nemesis: Nemesis) -> dict:
        h = sorted(fleet.hosts)  # by position, so real inventories work too (8 hosts or more)
        churn = Churn(fleet)
        writing = asyncio.create_task(churn.create(h[1], "kf-kill", 1500, "k-", rate=1000.0))
        await asyncio.sleep(0.5)
        await nemesis.kill(h[4])  # a reader dies mid-churn; its supervisor restarts it
        await writing
        await wait_for(lambda: checker.converged(churn.truth), 60, "convergence after the reader's restart")
        await churn.delete(h[1], "kf-kill", 300, "k-")
        await nemesis.kill(h[1])  # now the writer: its entries and deletes come back from its journal
        await wait_for(lambda: checker.converged(churn.truth), 60, "convergence after the writer's restart")
        return await checker.verdict(churn.truth)

    check_on_fresh_network(lab_inventory, "kf-kill", body, seed)


def test_paused_writer_is_declared_dead_then_restored(lab_inventory, seed):
    """SIGSTOP past failure detection: the others withdraw its entries (it is dead to them); after
    SIGCONT it refutes its death and its entries come back everywhere, with no rewrite."""

    async def body(fleet: Fleet, checker: Checker, nemesis: Nemesis) -> dict:
        h = sorted(fleet.hosts)  # by position, so real inventories work too (8 hosts or more)
        churn = Churn(fleet)
        await churn.create(h[2], "kf-pause", 500, "p-")
        await wait_for(lambda: checker.converged(churn.truth), 60, "convergence before the pause")
        await nemesis.pause(h[2])
        withdrawn = churn.truth.excluding({h[2]})  # its only writer is dead to the others
        others = Checker(fleet, {"kf-pause": [n for n in h if n != h[2]]})
        await wait_for(lambda: others.converged(withdrawn), 60, "the others to withdraw the paused host's entries")
        await churn.create(h[5], "kf-pause", 200, "q-")  # written while the paused host cannot hear
        await nemesis.resume(h[2])
        await wait_for(lambda: checker.converged(churn.truth), 60, "convergence after SIGCONT")
        await wait_for(checker.membership_converged, 60, "membership after SIGCONT")
        return await checker.verdict(churn.truth)

    check_on_fresh_network(lab_inventory, "kf-pause", body, seed)


def test_graceful_and_rolling_restarts_during_churn(lab_inventory, seed):
    """Readers restart one after another while two hosts write and delete; then the deleting
    writer restarts: a new life must overturn its own graceful leave, and its deletes hold."""

    async def body(fleet: Fleet, checker: Checker, nemesis: Nemesis) -> dict:
        h = sorted(fleet.hosts)  # by position, so real inventories work too (8 hosts or more)
        churn = Churn(fleet)
        await churn.create(h[0], "kf-restart", 600, "a-")
        writing = asyncio.gather(churn.create(h[3], "kf-restart", 1200, "b-", rate=400.0),
                                 churn.delete(h[0], "kf-restart", 200, "a-", rate=100.0))  # fmt: skip
        await nemesis.rolling_restart([h[5], h[6], h[7]], gap=0.5)
        await writing
        await nemesis.restart(h[0])
        await wait_for(lambda: checker.converged(churn.truth), 90, "convergence after the rolling restart")
        await wait_for(checker.membership_converged, 60, "every restarted host alive everywhere")
        return await checker.verdict(churn.truth)

    check_on_fresh_network(lab_inventory, "kf-restart", body, seed)


def test_ten_percent_loss_converges(lab_inventory, seed):
    async def body(fleet: Fleet, checker: Checker, nemesis: Nemesis) -> dict:
        h = sorted(fleet.hosts)  # by position, so real inventories work too (8 hosts or more)
        await nemesis.loss(10)
        churn = Churn(fleet)
        await asyncio.gather(churn.create(h[0], "kf-loss", 1000, "a-"), churn.create(h[7], "kf-loss", 1000, "b-"))
        await churn.delete(h[7], "kf-loss", 250, "b-")
        await wait_for(lambda: checker.converged(churn.truth), 60, "convergence under 10 % loss")
        return await checker.verdict(churn.truth)

    check_on_fresh_network(lab_inventory, "kf-loss", body, seed)


def test_added_delay_converges(lab_inventory, seed):
    """80 ms on every datagram (the agent's fault hook; the kernel has no netem): round trips of
    160 ms stay inside the local profile's 250 ms probe timeout, so nobody is falsely suspected."""

    async def body(fleet: Fleet, checker: Checker, nemesis: Nemesis) -> dict:
        h = sorted(fleet.hosts)  # by position, so real inventories work too (8 hosts or more)
        await nemesis.delay(80)
        churn = Churn(fleet)
        await asyncio.gather(churn.create(h[1], "kf-delay", 800, "a-"), churn.create(h[6], "kf-delay", 800, "b-"))
        await wait_for(lambda: checker.converged(churn.truth), 60, "convergence with 80 ms delay")
        return await checker.verdict(churn.truth)

    check_on_fresh_network(lab_inventory, "kf-delay", body, seed)
