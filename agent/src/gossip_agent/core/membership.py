"""SWIM membership with Lifeguard-style suspicion: probe, indirect probe, suspect, refute, dead, left.

Sans-IO: every input carries `now`; what must be sent comes out of `take_outbox()` (datagrams) and
`take_broadcasts()` (messages for the cluster broadcast queue); state changes come out as
`MemberChange`s. The transitions are data (`TRANSITIONS`), as in h11's `_state.py`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from .config import Config
from .errors import LocalProtocolError
from .rng import Rng
from .wire import (
    MAX_MEMBERS,
    MAX_NAME,
    Ack,
    Address,
    Alive,
    Dead,
    IndirectPing,
    Leave,
    MemberState,
    Message,
    Nack,
    Ping,
    Suspect,
)


class State(enum.IntEnum):
    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


class Input(enum.Enum):
    ALIVE = "alive"  # an Alive message with a higher incarnation
    SUSPECT = "suspect"  # a Suspect message with at least the current incarnation
    DEAD = "dead"  # a Dead message with at least the current incarnation
    LEAVE = "leave"  # the member said it leaves
    SUSPICION_TIMEOUT = "suspicion-timeout"  # no refutation before the suspicion deadline


# (state, input) -> new state. A pair not listed is a protocol error naming both.
TRANSITIONS: dict[tuple[State, Input], State] = {
    (State.ALIVE, Input.ALIVE): State.ALIVE,
    (State.ALIVE, Input.SUSPECT): State.SUSPECT,
    (State.ALIVE, Input.DEAD): State.DEAD,
    (State.ALIVE, Input.LEAVE): State.LEFT,
    (State.SUSPECT, Input.ALIVE): State.ALIVE,
    (State.SUSPECT, Input.SUSPECT): State.SUSPECT,
    (State.SUSPECT, Input.DEAD): State.DEAD,
    (State.SUSPECT, Input.LEAVE): State.LEFT,
    (State.SUSPECT, Input.SUSPICION_TIMEOUT): State.DEAD,
    (State.DEAD, Input.ALIVE): State.ALIVE,
    (State.DEAD, Input.SUSPECT): State.DEAD,  # suspicion of the dead changes nothing
    (State.DEAD, Input.DEAD): State.DEAD,
    (State.DEAD, Input.LEAVE): State.LEFT,
    (State.LEFT, Input.ALIVE): State.ALIVE,  # a node that left may join again
    (State.LEFT, Input.SUSPECT): State.LEFT,
    (State.LEFT, Input.DEAD): State.LEFT,
    (State.LEFT, Input.LEAVE): State.LEFT,
}


def transition(state: State, event: Input) -> State:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise LocalProtocolError(f"no transition from {state.name} on {event.value}") from None


# How far above what we know of a member (0 for one we do not know) an incarnation may be. It grows
# by one per refutation or restart; a larger jump is forged or corrupt, and believing it would make
# its member refute towards 2**63, past which no peer can decode its Alive (the member stays dead).
INCARNATION_WINDOW = 2**32

LIVE = frozenset({State.ALIVE, State.SUSPECT})
GONE = frozenset({State.DEAD, State.LEFT})
HEAL_BURST = 3  # dead members tried at once when one of them comes back (`reconnect_targets`)
REMINDED_SUSPECTS = 3  # suspects told so directly each probe interval (`_remind_suspects`)


@dataclass(slots=True)
class Member:
    name: str
    addr: Address
    incarnation: int
    state: State
    since: float  # time of the last state change
    # Dead by hearsay (`_learn_dead`): not passed on in our push-pulls, or members forgotten at
    # different times would be taught back to each other, and a dead one never forgotten.
    hearsay: bool = False


@dataclass(frozen=True, slots=True)
class MemberChange:
    name: str
    before: State | None  # None: newly known
    after: State
    at: float


@dataclass(slots=True)
class _Suspicion:
    started: float
    deadline: float
    confirmations: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Probe:
    seq: int
    target: str
    started: float
    indirect_sent: bool = False
    next_ping_at: float = 0.0  # after the indirect stage: when to ping directly again
    acked: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _RelayedProbe:
    requester: Address
    requester_seq: int
    deadline: float


class Membership:
    """One node's view of the cluster."""

    def __init__(self, name: str, addr: Address, config: Config, rng: Rng, now: float, incarnation: int = 0):
        self.name = name
        self.addr = addr
        self.config = config
        self.rng = rng
        self.incarnation = incarnation
        self.members: dict[str, Member] = {name: Member(name, addr, incarnation, State.ALIVE, now)}
        self.leaving = False
        self._suspicions: dict[str, _Suspicion] = {}
        self._probe_order: list[str] = []
        self._probe: _Probe | None = None
        self._relayed: dict[int, _RelayedProbe] = {}
        self._seq = 0
        self.next_probe_at = now + rng.random() * config.probe_interval  # spread probes out
        self.next_reconnect_at = math.inf  # no one is dead yet: see `_set_state`
        self._heal_seen_at = -math.inf  # when a dead member last came back: see `_set_state`
        self.next_remind_at = math.inf  # when suspects are next told so: see `_remind_suspects`
        self._heal_burst = False
        self._outbox: list[tuple[Address, Message]] = []
        self._broadcasts: list[Message] = []
        self.changes: list[MemberChange] = []
        self.alive_count = 1
        # Lifeguard's local health awareness: 0 is healthy. A node that misses acks it should have
        # had, or hears it is suspected, is likely the slow one (a busy CPU, a blocked loop); it
        # then probes less often and waits longer, instead of accusing healthy peers.
        self.awareness = 0
        self.implausible = 0  # messages dropped for an incarnation beyond INCARNATION_WINDOW
        self.refused_members = 0  # new members refused because MAX_MEMBERS are known
        self.forgotten: list[str] = []  # members dropped after dead_retention, for the node to clean up
        self._stream_probes: list[tuple[Address, Ping]] = []
        self._probes_started = 0
        self._corrected: dict[str, float] = {}  # peer -> when we last told it better, unasked

    # --- outputs ------------------------------------------------------------------------------

    def take_outbox(self) -> list[tuple[Address, Message]]:
        out, self._outbox = self._outbox, []
        return out

    def take_stream_probes(self) -> list[tuple[Address, Ping]]:
        """Pings to send over a stream, beside the indirect ones (memberlist's TCP fallback)."""
        out, self._stream_probes = self._stream_probes, []
        return out

    def take_broadcasts(self) -> list[Message]:
        out, self._broadcasts = self._broadcasts, []
        return out

    def take_changes(self) -> list[MemberChange]:
        out, self.changes = self.changes, []
        return out

    # --- reading ------------------------------------------------------------------------------

    def state_of(self, name: str) -> State | None:
        member = self.members.get(name)
        return None if member is None else member.state

    def live_peers(self) -> Iterator[Member]:
        return (m for m in self.members.values() if m.state in LIVE and m.name != self.name)

    def snapshot(self) -> list[MemberState]:
        return [
            MemberState(m.name, m.addr, m.incarnation, int(m.state))
            for m in self.members.values()
            if not (m.hearsay and m.state == State.DEAD)
        ]

    def _scaled(self, seconds: float) -> float:
        return seconds * (1 + self.awareness)

    def health(self, delta: int) -> None:
        """Move the local health score; the daemon also calls this when its loop was stalled."""
        self.awareness = min(max(0, self.awareness + delta), self.config.awareness_max - 1)

    def next_deadline(self) -> float:
        times = [self.next_probe_at, self.next_reconnect_at]
        if self._probe is not None and not self._probe.acked:
            wait = self.config.probe_timeout if not self._probe.indirect_sent else self.config.probe_interval
            times.append(self._probe.started + self._scaled(wait))
            if self._probe.indirect_sent:
                times.append(self._probe.next_ping_at)
        if self._suspicions:
            times.append(self.next_remind_at)
        times.extend(s.deadline for s in self._suspicions.values())
        times.extend(r.deadline for r in self._relayed.values())
        return min(times)

    # --- state changes ------------------------------------------------------------------------

    def _set_state(self, member: Member, new: State, now: float) -> None:
        old = member.state
        if new == old:
            return
        member.state = new
        member.since = now
        member.hearsay = False  # a state of our own seeing now
        if old in LIVE and new not in LIVE:
            self.alive_count -= 1
        elif old not in LIVE and new in LIVE:
            self.alive_count += 1
        if new != State.SUSPECT:
            self._suspicions.pop(member.name, None)
        if new in GONE:  # a dead member to try, or one that left to forget in time
            self.next_reconnect_at = min(self.next_reconnect_at, now + self.config.reconnect_interval)
        elif old == State.DEAD and now - self._heal_seen_at >= self.config.reconnect_interval:
            # A member we buried is back: a partition has likely healed, and those buried with
            # it are back too. Try a few of them now (`reconnect_targets`), not one a reconnect
            # interval: each answer revives its sender here and, as it merges our view, makes it
            # refute its own death and try its dead in turn; a heal spreads in a few round trips.
            self._heal_seen_at = now
            self._heal_burst = True
            self.next_reconnect_at = now
        self.changes.append(MemberChange(member.name, old, new, now))

    def _refute(self, incarnation: int) -> None:
        self.health(+1)  # someone could not reach us in time: we are likely the slow one
        self.incarnation = max(self.incarnation, incarnation) + 1
        me = self.members[self.name]
        me.incarnation = self.incarnation
        self._broadcasts.append(Alive(self.name, self.incarnation, self.addr))

    def _plausible(self, node: str, incarnation: int) -> bool:
        member = self.members.get(node)
        if incarnation - (member.incarnation if member is not None else 0) <= INCARNATION_WINDOW:
            return True
        self.implausible += 1
        return False

    def on_alive(self, msg: Alive, now: float) -> None:
        if not self._plausible(msg.node, msg.incarnation):
            return
        if msg.node == self.name:
            return  # only we speak for ourselves (a stale Alive of ours is harmless)
        member = self.members.get(msg.node)
        if member is None:
            if len(self.members) >= MAX_MEMBERS:
                self.refused_members += 1  # forged Alives must not grow us without bound
                return
            member = Member(msg.node, msg.addr, msg.incarnation, State.ALIVE, now)
            self.members[msg.node] = member
            self.alive_count += 1
            self.changes.append(MemberChange(msg.node, None, State.ALIVE, now))
            self._probe_order.insert(self.rng.randint(0, len(self._probe_order)), msg.node)
            self._broadcasts.append(msg)
            return
        if msg.incarnation < member.incarnation or (msg.incarnation == member.incarnation and not member.hearsay):
            return  # (dead by hearsay: its own word at that incarnation is news, it never refuted)
        member.incarnation = msg.incarnation
        member.addr = msg.addr
        self._set_state(member, transition(member.state, Input.ALIVE), now)
        self._broadcasts.append(msg)

    def on_suspect(self, msg: Suspect, now: float, direct: bool = False) -> None:
        """`direct`: the accuser sent it itself (a reminder, a buddy Suspect), not a relay."""
        if not self._plausible(msg.node, msg.incarnation):
            return
        if msg.node == self.name:
            self._answer_accusation(msg.incarnation, msg.by, now, direct)
            return
        member = self.members.get(msg.node)
        if member is None:
            return
        if msg.incarnation < member.incarnation:
            self._correct_accuser(msg.by, member, now)
            return
        if member.state == State.SUSPECT:
            suspicion = self._suspicions.get(msg.node)
            if suspicion is not None and msg.by not in suspicion.confirmations:
                suspicion.confirmations.add(msg.by)
                suspicion.deadline = self._suspicion_deadline(suspicion)
                self._broadcasts.append(msg)  # a new confirmation is news
            return
        new = transition(member.state, Input.SUSPECT)
        if new == State.SUSPECT:
            member.incarnation = msg.incarnation
            self._set_state(member, new, now)
            suspicion = _Suspicion(now, now, {msg.by})
            suspicion.deadline = self._suspicion_deadline(suspicion)
            if not self._suspicions:
                self.next_remind_at = now + self.config.probe_interval
            self._suspicions[msg.node] = suspicion
            self._broadcasts.append(msg)

    def _answer_accusation(self, incarnation: int, accuser: str, now: float, direct: bool) -> None:
        """We are suspected or declared dead."""
        if self.leaving:
            return
        if incarnation >= self.incarnation:
            self._refute(incarnation)
        else:
            # Accused at an incarnation we refuted already: the accuser missed our Alive and
            # would wait out its whole suspicion (up to a minute, unconfirmed), or hold us dead.
            # Say it again; the answer to its probe carries it (the queue keeps one per member).
            self._broadcasts.append(Alive(self.name, self.incarnation, self.addr))
        if direct:
            # And to the accuser itself (once a probe interval): its reminders
            # (`_remind_suspects`, `heard_from`) are not probes, and no answer of ours would
            # carry it there. Not for relayed accusations: a datagram of forged ones would have
            # us send as many.
            self._correct_accuser(accuser, self.members[self.name], now)

    def heard_from(self, name: str, now: float) -> None:
        """`name` sent us a datagram. One we hold dead is running, and does not know: its Dead
        went round while it was stalled or cut off, and nothing of ours goes to the dead but
        a reconnect now and then, to one dead member drawn at random (a lab CI run: a stalled
        agent's one peer on its side of a partition held it dead, and ignored its writes, for
        over 30 s). Tell it, once a probe interval, so that it refutes now."""
        member = self.members.get(name)
        if member is None or member.state != State.DEAD or self.leaving:
            return
        if now - self._corrected.get(name, -math.inf) < self.config.probe_interval:
            return
        self._note_corrected(name, now)
        self._send(member.addr, Dead(name, member.incarnation, self.name))

    def _note_corrected(self, peer: str, now: float) -> None:
        if len(self._corrected) >= MAX_MEMBERS:
            self._corrected.clear()
        self._corrected[peer] = now

    def _correct_accuser(self, accuser: str, member: Member, now: float) -> None:
        """`accuser` suspects or buries `member` at an incarnation refuted already: it missed
        the refutation, and its suspicion (up to a minute unconfirmed) would keep the cluster
        from agreeing, while its stale rumour is dropped by everyone who knows better. Whoever
        knows better tells it, directly: once per accuser a probe interval, so that a datagram
        full of stale accusations is not turned into as many datagrams at someone."""
        peer = self.members.get(accuser)
        if member.state != State.ALIVE or peer is None or peer.state not in LIVE or accuser == self.name:
            return
        if now - self._corrected.get(accuser, -math.inf) < self.config.probe_interval:
            return
        self._note_corrected(accuser, now)
        self._send(peer.addr, Alive(member.name, member.incarnation, member.addr))

    def _suspicion_deadline(self, suspicion: _Suspicion) -> float:
        # Lifeguard: start at the maximum and fall towards the minimum as independent
        # confirmations arrive; k = indirect_checks confirmations are expected in a real failure.
        low, high = self.config.suspicion_timeouts(self.alive_count)
        k = max(1, self.config.indirect_checks)
        confirmed = min(k, len(suspicion.confirmations) - 1)
        fraction = math.log(confirmed + 1) / math.log(k + 1)
        return suspicion.started + max(low, high - (high - low) * fraction)

    def on_dead(self, msg: Dead, now: float, direct: bool = False) -> None:
        """`direct`: the accuser sent it itself (`heard_from`), not a relay."""
        if not self._plausible(msg.node, msg.incarnation):
            return
        if msg.node == self.name:
            self._answer_accusation(msg.incarnation, msg.by, now, direct)
            return
        member = self.members.get(msg.node)
        if member is None or member.state in GONE:
            return
        if msg.incarnation < member.incarnation:
            self._correct_accuser(msg.by, member, now)
            return
        member.incarnation = msg.incarnation
        self._set_state(member, transition(member.state, Input.DEAD), now)
        self._broadcasts.append(msg)

    def on_leave(self, msg: Leave, now: float) -> None:
        if not self._plausible(msg.node, msg.incarnation):
            return
        if msg.node == self.name:
            # Our leave from a former life (we restarted at the same incarnation): we are back.
            if msg.incarnation >= self.incarnation and not self.leaving:
                self._refute(msg.incarnation)
            return
        member = self.members.get(msg.node)
        if member is None or msg.incarnation < member.incarnation:
            return
        if member.state == State.LEFT:
            return
        member.incarnation = msg.incarnation
        self._set_state(member, transition(member.state, Input.LEAVE), now)
        self._broadcasts.append(msg)

    def merge_remote(self, states: tuple[MemberState, ...], now: float) -> None:
        """Fold a peer's full view (push-pull) into ours.

        As memberlist does, a remote 'dead' is taken as 'suspect': a death we did not see
        ourselves is given the chance to be refuted rather than spread.
        """
        for s in states:
            state = State(s.state)
            if state == State.ALIVE:
                self.on_alive(Alive(s.node, s.incarnation, s.addr), now)
            elif state == State.LEFT:
                if s.node not in self.members:
                    continue
                self.on_leave(Leave(s.node, s.incarnation), now)
            else:
                if s.node not in self.members and s.node != self.name:
                    self._learn_dead(s, now)
                    continue
                # Named as a remote accuser of its own, cut to fit the wire's name limit.
                self.on_suspect(Suspect(s.node, s.incarnation, f"push-pull:{s.node}"[:MAX_NAME]), now)

    def _learn_dead(self, s: MemberState, now: float) -> None:
        """A member we never heard of, suspect or dead in a peer's view: we joined while it was
        cut off, say. Known as dead, it is tried like our own dead (`reconnect_targets`), and
        an answer revives it here; unknown, it was learnt only from its Alive in gossip, which
        a lost datagram could keep from us until the next push-pull, 30 s on (heal bench seed
        19: 22 s after the heal). memberlist ignores such states; it has the same gap."""
        if not self._plausible(s.node, s.incarnation):
            return
        if len(self.members) >= MAX_MEMBERS:
            self.refused_members += 1
            return
        self.members[s.node] = Member(s.node, s.addr, s.incarnation, State.DEAD, now, hearsay=True)
        self.changes.append(MemberChange(s.node, None, State.DEAD, now))
        self.next_reconnect_at = min(self.next_reconnect_at, now + self.config.reconnect_interval)

    def leave(self, now: float) -> Leave:
        """Announce a graceful leave; the returned message must be broadcast before exit."""
        self.leaving = True
        me = self.members[self.name]
        self._set_state(me, State.LEFT, now)
        msg = Leave(self.name, self.incarnation)
        self._broadcasts.append(msg)
        return msg

    # --- probing ------------------------------------------------------------------------------

    def _next_target(self) -> Member | None:
        self._probes_started += 1
        if self._suspicions and self._probes_started % 2 == 0:
            # Every other probe goes to a member we suspect: with the buddy system it hears so
            # from us and refutes in its answer. Round-robin alone reaches it only after all
            # others, and a suspicion we hold at an incarnation it refuted already (we missed
            # that Alive, and everyone drops our stale rumour) kept the cluster from agreeing
            # for tens of seconds after a heal.
            name = self.rng.choice(sorted(self._suspicions))
            member = self.members.get(name)
            if member is not None and member.state == State.SUSPECT:
                return member
        for _ in range(2):
            while self._probe_order:
                name = self._probe_order.pop()
                member = self.members.get(name)
                if member is not None and member.state in LIVE and name != self.name:
                    return member
            names = [m.name for m in self.live_peers()]
            self.rng.shuffle(names)
            self._probe_order = names
        return None

    def _send(self, addr: Address, msg: Message) -> None:
        self._outbox.append((addr, msg))

    def tick(self, now: float) -> None:
        self._check_probe(now)
        if now >= self.next_probe_at and not self.leaving:
            self.next_probe_at = now + self._scaled(self.config.probe_interval)
            self._start_probe(now)
        if self._suspicions and now >= self.next_remind_at:
            self._remind_suspects(now)
        for name, suspicion in list(self._suspicions.items()):
            if now >= suspicion.deadline:
                member = self.members[name]
                self._set_state(member, transition(member.state, Input.SUSPICION_TIMEOUT), now)
                self._broadcasts.append(Dead(name, member.incarnation, self.name))
        for seq, relayed in list(self._relayed.items()):
            if now >= relayed.deadline:
                del self._relayed[seq]
                self._send(relayed.requester, Nack(relayed.requester_seq))

    def _remind_suspects(self, now: float) -> None:
        """Tell up to REMINDED_SUSPECTS suspects so directly, every `probe_interval` however poor
        our health: each answers with its Alive, to us (`on_suspect`). Probes, stretched up to
        8 s by poor local health, come too seldom after a heal, when our health is poorest:
        a suspicion held at an incarnation refuted while we were cut off, whose refutation
        missed us, lasted until its timeout (bench/heal_bench.py seed 2: 8.5 s after the heal)."""
        self.next_remind_at = now + self.config.probe_interval
        names = sorted(self._suspicions)
        for name in self.rng.sample(names, min(REMINDED_SUSPECTS, len(names))):
            member = self.members[name]
            self._send(member.addr, Suspect(name, member.incarnation, self.name))

    def _start_probe(self, now: float) -> None:
        target = self._next_target()
        if target is None:
            self._probe = None
            return
        self._seq += 1
        self._probe = _Probe(self._seq, target.name, now)
        if target.state == State.SUSPECT:
            # Lifeguard's buddy system: a suspect we probe hears it is suspected from us at once,
            # not when the rumour happens to reach it, and refutes in its answer.
            self._send(target.addr, Suspect(target.name, target.incarnation, self.name))
        self._send(target.addr, Ping(self._seq, target.name))

    def _check_probe(self, now: float) -> None:
        probe = self._probe
        if probe is None or probe.acked:
            return
        target = self.members.get(probe.target)
        if target is None or target.state not in LIVE:
            self._probe = None
            return
        if not probe.indirect_sent and now >= probe.started + self._scaled(self.config.probe_timeout):
            probe.indirect_sent = True
            helpers = [m for m in self.live_peers() if m.name != probe.target and m.state == State.ALIVE]
            chosen = self.rng.sample(helpers, min(self.config.indirect_checks, len(helpers)))
            probe.expected_nacks = len(chosen)
            for helper in chosen:
                self._send(helper.addr, IndirectPing(probe.seq, target.name, target.addr))
            # And over a stream, as memberlist does: TCP resends what a lossy link drops, where
            # the indirect probes' four datagrams each risk the loss again. Under 10 % loss the
            # datagram paths alone failed a live member's probe about once in 120, and a cluster
            # of 130 was never without a false suspicion for long (bench/heal_bench.py).
            self._stream_probes.append((target.addr, Ping(probe.seq, target.name)))
        if probe.indirect_sent and now >= probe.next_ping_at:
            # Directly again, every probe timeout until the probe ends: a ping or its ack may
            # just have been lost, and a probe stretched by poor local health (up to 8 s) that
            # began in a partition must not outlast its heal and end in a suspicion (after a
            # heal, such leftovers were most of the false suspicions; bench/heal_bench.py).
            probe.next_ping_at = now + self.config.probe_timeout
            self._send(target.addr, Ping(probe.seq, target.name))
        if now >= probe.started + self._scaled(self.config.probe_interval):
            self._probe = None
            # Helpers that did not even nack did not hear us or we did not hear them: our fault.
            # All nacked: the target is down and we are fine (Lifeguard; memberlist alike).
            self.health(probe.expected_nacks - probe.nacks if probe.expected_nacks else 1)
            self.on_suspect(Suspect(target.name, target.incarnation, self.name), now)

    def on_ping(self, msg: Ping, sender_addr: Address) -> None:
        if msg.target == self.name:
            self._send(sender_addr, Ack(msg.seq))

    def on_indirect_ping(self, msg: IndirectPing, sender_addr: Address, now: float) -> None:
        self._seq += 1
        self._relayed[self._seq] = _RelayedProbe(sender_addr, msg.seq, now + self.config.probe_timeout)
        self._send(msg.target_addr, Ping(self._seq, msg.target))

    def on_ack(self, msg: Ack) -> None:
        relayed = self._relayed.pop(msg.seq, None)
        if relayed is not None:
            self._send(relayed.requester, Ack(relayed.requester_seq))
            return
        if self._probe is not None and self._probe.seq == msg.seq and not self._probe.acked:
            self._probe.acked = True
            self.health(-1)

    def on_nack(self, msg: Nack) -> None:
        # A helper answered in time that the target did not: the helper and we are healthy.
        if self._probe is not None and self._probe.seq == msg.seq:
            self._probe.nacks += 1

    # --- dead members -------------------------------------------------------------------------

    def reconnect_targets(self, now: float) -> list[Member]:
        """Every `reconnect_interval`, one random dead member to try a push-pull with; right
        after a dead member came back, HEAL_BURST of them (once a reconnect interval)."""
        if now < self.next_reconnect_at:
            return []
        self.next_reconnect_at = now + self.config.reconnect_interval
        self._forget_old_dead(now)
        dead = [m for m in self.members.values() if m.state == State.DEAD]
        if not dead:
            # Nothing to reconnect to until a member dies (`_set_state`), so idle agents sleep;
            # but those that left are still forgotten in time.
            left = [m.since + self.config.dead_retention for m in self.members.values() if m.state in GONE]
            self.next_reconnect_at = max(self.next_reconnect_at, min(left, default=math.inf))
        count = HEAL_BURST if self._heal_burst else 1
        self._heal_burst = False
        return self.rng.sample(dead, min(count, len(dead)))

    def _forget_old_dead(self, now: float) -> None:
        for name, member in list(self.members.items()):
            if member.state in GONE and now - member.since > self.config.dead_retention:
                del self.members[name]
                self.forgotten.append(name)
