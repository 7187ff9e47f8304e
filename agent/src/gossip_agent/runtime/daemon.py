"""Runs one Node for real: sockets, timers, the journal, the data plane, signals and a graceful leave.

The node is a pure state machine; `_pump` moves what it produced onto the wire and re-arms the one
timer at the node's next deadline. Every input path (datagram, stream, API call, timer) ends in a
pump, so nothing the node wants sent waits for the next tick.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from ..core.errors import LocalProtocolError
from ..core.membership import State
from ..core.node import Node, StreamRequest
from ..core.table import Change
from ..core.wire import TableEvent
from .config import AgentConfig, NetworkConfig
from .crypto import Keyring
from .dataplane import Dataplane
from .store import Journal
from .transport import LinkFault, Transport

LAMPORT_LEASE = 10_000  # Lamport ticks leased per durable journal write
JOURNAL_BACKOFF_MAX = 30.0  # seconds between retries of a journal that keeps failing
# A timer due this much before the node's next deadline is left to fire: re-arming costs less than
# a wakeup, but not on every datagram of a busy loop.
LATE_TIMER_SLACK = 0.05
log = logging.getLogger("gossip_agent")


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.keyring = Keyring.load(config.keyring_file) if config.keyring_file else None
        self.journal = Journal(config.state_dir / "journal.db", config.node_name)
        self.loop = asyncio.get_running_loop()
        wall_us = int(time.time() * 1e6)
        # The core keeps time on the monotonic loop clock; walls are for people and latency only.
        self.node = Node(
            config.node_name,
            (config.advertise_addr, config.port),
            config.protocol,
            random.Random(),
            self.loop.time(),
            # Above every time the last life may have sent (its lease was made durable before use),
            # and, for a life whose journal was lost, above what its former life could have reached.
            lamport=max(self.journal.meta("lamport"), self.journal.meta("lamport_lease"), wall_us),
            # A new life: peers may hold our graceful leave or our death at the saved incarnation,
            # which an Alive at the same one could not overturn.
            incarnation=self.journal.meta("incarnation") + 1,
            wall_us=wall_us,
        )
        self.transport = Transport(
            config.bind_addr,
            config.port,
            self.keyring,
            self._on_datagram,
            self._on_stream,
            self.node.count,
            config.protocol.max_frame_bytes,
            config.protocol.stream_timeout,
        )
        # Our own record of when the timer fires (`_tick` measures a stalled loop by it).
        self._timer: asyncio.Handle | None = None
        self._timer_at = 0.0
        self._lamport_lease = 0
        self._next_journal_prune = 0.0
        self._saved_incarnation = self.node.membership.incarnation
        self.writes = 0  # write requests taken, so that only their answers wait for the commit
        self.pending_commit: asyncio.Future[None] | None = None  # the group commit writes wait for
        # Own writes a failed journal write left to retry, the latest per key.
        self._unjournaled: dict[tuple[str, str, str], TableEvent] = {}
        self._journal_backoff = 0.0
        self._journal_retry_at = 0.0
        self.journal.set_meta("incarnation", self._saved_incarnation)  # the next life starts above it
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stopping = asyncio.Event()
        self._started = self.loop.time()
        self.network_params: dict[str, NetworkConfig] = {}  # of every attached network
        self.dataplane = Dataplane(
            config.node_name,
            config.advertise_addr,
            config.dataplane_reconcile_interval,
            self._settled,
            self.loop,
        )

    # --- clocks ---------------------------------------------------------------------------------

    def now(self) -> float:
        return self.loop.time()

    @staticmethod
    def wall_ms() -> int:
        return int(time.time() * 1000)

    def to_wall_ms(self, loop_time: float) -> int:
        return int((time.time() - (self.loop.time() - loop_time)) * 1000)

    # --- driving the node -------------------------------------------------------------------------

    def _on_datagram(self, addr: tuple[str, int], data: bytes) -> None:
        self.node.handle_datagram(addr, data, self.now())
        self._pump()

    def _on_stream(self, frame: bytes) -> bytes:
        reply = self.node.handle_stream(frame, self.now())
        self._pump()
        return reply

    def _tick(self) -> None:
        self._timer = None
        now = self.now()
        if now - self._timer_at > self.node.config.probe_timeout:
            # The loop was blocked (a huge sync, a starved CPU): acks may sit unread in the
            # socket, so missed ones prove nothing about peers. Lifeguard: distrust ourselves.
            self.node.membership.health(+1)
            self.node.count("loop_stalls")
        self.node.tick(now)
        if now >= self._next_journal_prune:
            # A host that deletes all day must not keep every tombstone until its next restart.
            self._next_journal_prune = now + min(3600.0, self.config.protocol.tombstone_ttl)
            try:
                self.journal.prune(self.wall_ms(), self.config.protocol.tombstone_ttl)
            except sqlite3.Error as exc:  # tried again at the next interval; the tick goes on
                log.error("journal prune failed: %s", exc)
                self.node.count("journal_errors")
        self._pump()

    def _pump(self) -> None:
        node = self.node
        self._write_journal()
        for addr, data in node.take_datagrams():
            self.transport.send(addr, data)
        for request in node.take_streams():
            self._spawn(self._stream(request))
        for change in node.take_changes():
            if isinstance(change, Change):
                self.dataplane.on_change(change.network, change.table, change.key, change.after, change.at)
            elif change.after == State.SUSPECT:
                node.count("member_suspected")
        if not self.stopping.is_set():
            deadline = min(node.next_deadline(), self._next_journal_prune)
            # Re-armed when due sooner, and when due much later: a probe answered in time leaves
            # the timer at its timeout, and an idle agent woke for nothing once a probe.
            if self._timer is None or not -0.001 <= deadline - self._timer_at <= LATE_TIMER_SLACK:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer_at = max(deadline, self.now())
                self._timer = self.loop.call_at(self._timer_at, self._tick)

    def _write_journal(self, force: bool = False) -> None:
        """What must be durable before this pump's messages leave: the Lamport lease, own writes,
        the incarnation. A failure is not fatal: the node goes on (the pump must still flush and
        re-arm its timer), the writes are retried at a later pump (backing off while the journal
        keeps failing; a last time at leave), and the writers waiting on this commit are told
        theirs are not durable. Messages still go out meanwhile, though the lease and the
        incarnation are not durable either: a node that falls silent when its disk fills is
        declared dead, and a restart starts above the wall clock in microseconds anyway."""
        node = self.node
        commit, self.pending_commit = self.pending_commit, None
        # Every own write, the core's re-assertions too; not a left network's tombstones.
        for event in node.take_own_writes():
            if event.network in node.networks:
                self._unjournaled[event.network, event.table, event.key] = event
        if commit is None and not force and self.now() < self._journal_retry_at:
            return  # each try may block the loop for the lock's timeout: back off, unless a writer waits
        try:
            if node.clock.time >= self._lamport_lease:
                # Lease Lamport time ahead, durably, before any of it leaves this host: the
                # journal's own writes are synchronous=NORMAL and an OS crash may lose the last of
                # them, and a restart that reused a time would give two values one version.
                lease = node.clock.time + LAMPORT_LEASE
                self.journal.lease_lamport(lease)
                self._lamport_lease = lease
            self.journal.record(self._unjournaled.values())
            self._unjournaled = {}
            if node.membership.incarnation != self._saved_incarnation:
                self.journal.set_meta("incarnation", node.membership.incarnation)
                self._saved_incarnation = node.membership.incarnation
        except Exception as exc:  # noqa: BLE001 - sqlite3.Error, or anything: the writers must hear
            log.error("journal write failed (%d writes wait to be retried): %s", len(self._unjournaled), exc)
            node.count("journal_errors")
            self._journal_backoff = min(JOURNAL_BACKOFF_MAX, 2 * self._journal_backoff or 1.0)
            self._journal_retry_at = self.now() + self._journal_backoff
            if commit is not None and not commit.done():
                commit.set_exception(exc)
            return
        self._journal_backoff, self._journal_retry_at = 0.0, 0.0
        if commit is not None and not commit.done():
            commit.set_result(None)
            node.count("journal_group_commits")

    async def _stream(self, request: StreamRequest) -> None:
        waited = False

        def queued() -> None:  # behind our own streams: no patience runs out on it until it connects
            nonlocal waited
            waited = True
            self.node.on_stream_queued(request.id)

        def started() -> None:
            if waited:
                self.node.on_stream_started(request.id, self.now())
                self._pump()  # the timer: its patience runs from now

        def sent() -> None:
            self.node.on_stream_sent(request.id, self.now())
            self._pump()  # the timer: patience may now end sooner

        reply = await self.transport.request(request.addr, request.frame, sent, queued, started)
        self.node.on_stream_reply(request.id, reply, self.now())
        self._pump()

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- API operations (called by api.py) -----------------------------------------------------------

    def attach(self, network: str, vxlan_id: int | None = None, subnet: str | None = None) -> None:
        """Join a network; vxlan_id and subnet, when not given, come from the config's entry."""
        held = self.network_params.get(network)
        if held is not None:
            for name, given, value in (("vxlan_id", vxlan_id, held.vxlan_id), ("subnet", subnet, held.subnet)):
                if given is not None and given != value:
                    raise LocalProtocolError(f"network {network!r} is attached with {name} {value}: detach it first")
            self.journal.attached(network, vxlan_id, subnet)
        else:
            self.journal.attached(network, vxlan_id, subnet)  # first: if it fails, nothing changed
            self.node.attach(network, self.now())
            self._program(self._params(NetworkConfig(network, vxlan_id, subnet)))
        self._pump()

    def detach(self, network: str) -> None:
        self.node.require_network(network)
        # The journal first: if it fails, nothing changed (its entries would come back at the
        # next start, re-announced, were the node to leave the network without it).
        self.journal.detached(network)
        self._unjournaled = {k: e for k, e in self._unjournaled.items() if k[0] != network}
        self.node.detach(network, self.now(), self.wall_ms())
        self.network_params.pop(network, None)
        self.dataplane.detach(network)  # the node drops the table whole: no change says so
        self._pump()

    def _params(self, given: NetworkConfig) -> NetworkConfig:
        """What was given (through the API, or saved from it), the config's entry for the rest."""
        configured = next((n for n in self.config.networks if n.id == given.id), NetworkConfig(given.id))
        return NetworkConfig(
            given.id,
            configured.vxlan_id if given.vxlan_id is None else given.vxlan_id,
            configured.subnet if given.subnet is None else given.subnet,
        )

    def _program(self, params: NetworkConfig) -> None:
        self.network_params[params.id] = params
        table = self.node.networks[params.id].table
        entries = (e.event for e in table.visible())
        self.dataplane.attach(params.id, params.vxlan_id, params.subnet, entries, self.now())

    def _settled(self, network: str) -> bool:
        """Whether the network's table holds what its members have, so that the data plane may
        remove what the tables no longer name: synced once with a member, or no member of the
        network known once we joined through a seed. The cluster's only seed, restarted, has no
        seed to join through: until a sync it counts as alone only after a push-pull interval,
        or its empty view would wipe the routes its containers are using."""
        state = self.node.networks.get(network)
        if state is None:
            return False
        if state.own_synced:
            return True
        if self.node.peers_in(network):
            return False
        joined = bool(self.node.stats.get("joined"))
        alone = not self.other_seeds() and self.now() - self._started > self.config.protocol.push_pull_interval
        return joined or alone

    def write(self, network: str, items: Iterable[tuple[str, str, bytes]]) -> int:
        """Create or update a batch of own entries; all or nothing is validated before writing."""
        self.node.require_network(network)  # raises LocalProtocolError when not attached
        now, wall = self.now(), self.wall_ms()
        events = [self.node.write(network, table, key, value, now, wall) for table, key, value in items]
        self._commit_soon()
        return len(events)

    def delete(self, network: str, items: Iterable[tuple[str, str]]) -> int:
        state = self.node.require_network(network)
        keys = list(items)
        # A delete answered 500 (applied, not yet durable) may be sent again: it then waits for
        # the journal like a new one.
        shown = {(t, k) for t, k in keys if (e := state.table.get(t, k)) is not None and e.visible}
        waiting = {(t, k) for t, k in keys if (network, t, k) in self._unjournaled} - shown
        missing = [f"{t}/{k}" for t, k in keys if (t, k) not in shown | waiting]
        if missing:
            raise LocalProtocolError(f"no entry {missing[0]} in network {network!r} ({len(missing)} missing)")
        now, wall = self.now(), self.wall_ms()
        for table, key in keys:
            if (table, key) in shown:
                self.node.delete(network, table, key, now, wall)
        self._commit_soon()
        return len(keys)

    def _commit_soon(self) -> None:
        """Group commit: the writes of every request answered in this loop turn go to the journal
        in one transaction, and out in one flush, at the start of the next turn; each answer
        waits for it (pending_commit), so none is given before its write is durable."""
        self.writes += 1
        if self.pending_commit is None:
            self.pending_commit = self.loop.create_future()
            self.loop.call_soon(self._pump)

    def set_fault(self, peer: str, drop: float, delay: float) -> None:
        self.transport.faults[peer] = LinkFault(drop, delay)

    def clear_faults(self) -> None:
        self.transport.faults.clear()

    # --- life cycle -----------------------------------------------------------------------------

    def other_seeds(self) -> list[tuple[str, int]]:
        return [s for s in self.config.seeds if s != (self.config.advertise_addr, self.config.port)]

    async def _join(self) -> None:
        """Keep trying the seeds, with backoff, until one answers."""
        seeds = self.other_seeds()
        delay = 0.5
        attempt = 0
        while seeds and not self.stopping.is_set():
            attempt += 1
            log.info("join attempt %d via %s", attempt, ", ".join(f"{h}:{p}" for h, p in seeds))
            self.node.join(seeds, self.now())
            self._pump()
            try:
                await asyncio.wait_for(self.stopping.wait(), delay)
            except TimeoutError:
                pass
            if self.node.stats.get("joined", 0):
                log.info("joined the cluster (%d members alive)", self.node.membership.alive_count)
                return
            delay = min(delay * 2, 30.0)

    async def run(self, on_ready: Any = None) -> int:
        # In our networks before the socket opens: peers go on pushing to a restarted agent, and
        # what was read before its networks were attached was dropped as out of scope.
        saved = {n.id: n for n in self.journal.networks()}
        for network in sorted({n.id for n in self.config.networks} | set(saved)):
            self.node.attach(network, self.now())
        own = self.journal.load(self.wall_ms(), self.config.protocol.tombstone_ttl)
        if own:
            self.node.restore(own, self.now(), self.wall_ms())
            log.info("restored %d own entries from the journal", len(own))
        await self.transport.start()
        for network in sorted(self.node.networks):  # restore may have attached one more
            self._program(self._params(saved.get(network, NetworkConfig(network))))
        self.dataplane.start()
        self._pump()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stopping.set)
        if on_ready is not None:
            await on_ready()
        log.info(
            "agent %s listening on %s:%d (pid %d)",
            self.config.node_name,
            self.config.bind_addr,
            self.config.port,
            os.getpid(),
        )
        self._spawn(self._join())
        await self.stopping.wait()
        await self.leave()
        return 0

    async def leave(self) -> None:
        """Graceful leave: the Leave goes out (directly and gossiped) before the sockets close."""
        log.info("leaving the cluster")
        self.node.leave(self.now())
        for addr, data in self.node.take_datagrams():
            self.transport.send(addr, data)
        if self._timer is not None:
            self._timer.cancel()
        await asyncio.sleep(0.05)
        for task in list(self._tasks):
            task.cancel()
        await self.transport.close()
        self.dataplane.stop()
        self._write_journal(force=True)  # a last try for writes a failing journal left waiting
        self.journal.close()
