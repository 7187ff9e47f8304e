"""SWIM transitions, refutation, probing and Lifeguard-style suspicion of one Membership."""

from __future__ import annotations

import random

import pytest

from gossip_agent.core.config import Config
from gossip_agent.core.errors import LocalProtocolError
from gossip_agent.core.membership import (
    HEAL_BURST,
    REMINDED_SUSPECTS,
    TRANSITIONS,
    Input,
    Membership,
    State,
    transition,
)
from gossip_agent.core.wire import Ack, Alive, Dead, IndirectPing, Leave, MemberState, Ping, Suspect

CONFIG = Config()


def member_view(*others: str) -> Membership:
    m = Membership("me", ("10.0.0.1", 1), CONFIG, random.Random(1), now=0.0)
    for i, name in enumerate(others):
        m.on_alive(Alive(name, 1, ("10.0.0.9", i)), 0.0)
    m.take_broadcasts()
    m.take_changes()
    return m


def test_every_state_input_pair_is_either_listed_or_an_error_naming_both():
    for state in State:
        for event in Input:
            if (state, event) in TRANSITIONS:
                assert transition(state, event) in State
            else:
                with pytest.raises(LocalProtocolError, match=f"{state.name}.*{event.value}"):
                    transition(state, event)


def test_suspicion_of_ourselves_is_refuted_with_a_higher_incarnation():
    m = member_view("a")
    m.on_suspect(Suspect("me", 0, "a"), 1.0)
    assert m.incarnation == 1
    assert m.take_broadcasts() == [Alive("me", 1, ("10.0.0.1", 1))]
    m.on_dead(Dead("me", 5, "a"), 2.0)
    assert m.incarnation == 6


def test_our_own_leave_from_a_former_life_is_refuted():
    m = member_view("a")
    m.on_leave(Leave("me", 0), 1.0)  # a peer's push-pull still holds our leave before a restart
    assert m.incarnation == 1
    assert m.take_broadcasts() == [Alive("me", 1, ("10.0.0.1", 1))]
    m.leave(2.0)
    m.take_broadcasts()
    m.on_leave(Leave("me", 1), 3.0)  # while we are leaving, our own leave is not refuted
    assert m.take_broadcasts() == []


def test_local_health_stretches_probing_when_we_look_slow_and_recovers_on_acks():
    m = member_view("a", "b", "c", "d")
    assert m.awareness == 0
    m.on_suspect(Suspect("me", 0, "a"), 1.0, direct=True)  # refuting says: we may be the slow one
    assert m.awareness == 1
    assert m.take_outbox() == [(("10.0.0.9", 0), Alive("me", 1, ("10.0.0.1", 1)))]  # to the accuser, directly
    m.tick(m.next_probe_at)
    (addr, ping), *_ = m.take_outbox()
    started = m.next_probe_at - 2 * CONFIG.probe_interval  # the probe interval doubled
    assert m.next_deadline() == pytest.approx(started + 2 * CONFIG.probe_timeout)
    m.on_ack(Ack(ping.seq))
    assert m.awareness == 0
    for _ in range(20):
        m.health(+1)
    assert m.awareness == CONFIG.awareness_max - 1


def test_stale_messages_do_not_change_a_member():
    m = member_view("a")
    m.on_alive(Alive("a", 3, ("10.0.0.9", 0)), 1.0)
    m.on_suspect(Suspect("a", 2, "b"), 1.0)
    assert m.state_of("a") == State.ALIVE
    m.on_suspect(Suspect("a", 3, "b"), 1.0)
    assert m.state_of("a") == State.SUSPECT
    m.on_alive(Alive("a", 3, ("10.0.0.9", 0)), 1.0)  # same incarnation cannot refute
    assert m.state_of("a") == State.SUSPECT
    m.on_alive(Alive("a", 4, ("10.0.0.9", 0)), 1.0)
    assert m.state_of("a") == State.ALIVE


def test_unanswered_probe_goes_indirect_then_suspect_then_dead():
    m = member_view("a", "b", "c", "d")
    target_seen = None
    now = m.next_probe_at
    m.tick(now)
    (addr, ping), *_ = m.take_outbox()
    assert isinstance(ping, Ping)
    target_seen = ping.target
    m.tick(now + CONFIG.probe_timeout)
    sent = m.take_outbox()
    indirect = [msg for _, msg in sent if isinstance(msg, IndirectPing)]
    assert len(indirect) == CONFIG.indirect_checks
    assert all(msg.target == target_seen for msg in indirect)
    assert [p.target for p in (msg for _, msg in sent) if isinstance(p, Ping)] == [target_seen]  # once more
    assert [p.target for _, p in m.take_stream_probes()] == [target_seen]  # and over a stream
    m.tick(now + CONFIG.probe_interval)
    assert m.state_of(target_seen) == State.SUSPECT
    low, high = CONFIG.suspicion_timeouts(m.alive_count)
    m.tick(now + CONFIG.probe_interval + low)  # no confirmations: the maximum applies
    assert m.state_of(target_seen) == State.SUSPECT
    m.tick(now + CONFIG.probe_interval + high)
    assert m.state_of(target_seen) == State.DEAD
    assert any(isinstance(b, Dead) and b.node == target_seen for b in m.take_broadcasts())


def test_confirmations_shorten_suspicion_to_the_minimum():
    m = member_view("a", "b", "c", "d", "e")
    m.on_suspect(Suspect("a", 1, "b"), 10.0)
    for by in ("c", "d", "e"):
        m.on_suspect(Suspect("a", 1, by), 10.0)
    low, _ = CONFIG.suspicion_timeouts(m.alive_count)
    m.tick(10.0 + low - 0.01)
    assert m.state_of("a") == State.SUSPECT
    m.tick(10.0 + low)
    assert m.state_of("a") == State.DEAD


def test_acked_probe_keeps_the_target_alive_and_indirect_acks_are_relayed():
    m = member_view("a")
    m.tick(m.next_probe_at)
    (_, ping), *_ = m.take_outbox()
    m.on_ack(Ack(ping.seq))
    m.tick(m.next_probe_at - 0.01)
    assert m.state_of("a") == State.ALIVE
    m.on_indirect_ping(IndirectPing(77, "a", ("10.0.0.9", 0)), ("10.0.0.5", 5), 3.0)
    ((_, relayed_ping),) = m.take_outbox()
    m.on_ack(Ack(relayed_ping.seq))
    assert m.take_outbox() == [(("10.0.0.5", 5), Ack(77))]


def test_leave_marks_left_and_a_later_alive_rejoins():
    m = member_view("a")
    m.on_leave(Leave("a", 1), 1.0)
    assert m.state_of("a") == State.LEFT
    assert m.alive_count == 1
    m.on_alive(Alive("a", 2, ("10.0.0.9", 0)), 2.0)
    assert m.state_of("a") == State.ALIVE
    assert [c.after for c in m.take_changes()] == [State.LEFT, State.ALIVE]


def test_a_long_probe_keeps_pinging_so_a_heal_midway_ends_it_well():
    """Poor local health stretches a probe (here to 4 s); one begun in a partition is answered
    by a direct ping sent after the heal, and ends in no suspicion."""
    m = member_view("a", "b", "c")
    m.awareness = 3
    now = m.next_probe_at
    m.tick(now)
    (_, first), *_ = m.take_outbox()
    pings = []
    t = now
    while t < now + 3.0:  # partitioned: nothing comes back
        t += 0.05
        m.tick(t)
        pings += [msg for _, msg in m.take_outbox() if isinstance(msg, Ping) and msg.target == first.target]
    assert len(pings) >= 2, "no direct ping after the indirect stage"
    assert all(p.seq == first.seq for p in pings)
    t += CONFIG.probe_timeout  # healed: the next ping is answered
    m.tick(t)
    m.on_ack(Ack(first.seq))
    m.tick(now + 4 * CONFIG.probe_interval + 0.01)
    assert m.state_of(first.target) == State.ALIVE


def test_a_suspect_probed_hears_it_is_suspected_and_a_stale_suspicion_gets_our_alive_again():
    m = member_view("a")
    m.on_suspect(Suspect("a", 1, "me"), 0.0)
    m.tick(m.next_probe_at)
    sent = [msg for _, msg in m.take_outbox()]
    assert isinstance(sent[0], Suspect)
    assert sent[0].node == "a"
    assert isinstance(sent[1], Ping)
    # The suspected side: refuted at 1 already, then suspected at 0 by one who missed that.
    target = member_view("b")
    target.on_suspect(Suspect("me", 0, "b"), 1.0)
    assert target.incarnation == 1
    target.take_broadcasts()
    target.on_suspect(Suspect("me", 0, "b"), 2.0)
    assert target.incarnation == 1  # no new incarnation for an old suspicion...
    assert target.take_broadcasts() == [Alive("me", 1, ("10.0.0.1", 1))]  # ...but our Alive again


def test_reconnect_attempts_sleep_while_no_member_is_dead_and_start_when_one_dies():
    m = member_view("a", "b")
    assert m.next_reconnect_at == float("inf")
    assert m.next_deadline() == m.next_probe_at
    m.on_dead(Dead("a", 1, "b"), 100.0)
    assert m.next_reconnect_at == 100.0 + CONFIG.reconnect_interval
    assert [t.name for t in m.reconnect_targets(100.0 + CONFIG.reconnect_interval)] == ["a"]


def test_a_buried_member_coming_back_sends_us_to_the_other_dead_at_once():
    """A heal: the first dead member that answers again sets off HEAL_BURST reconnects right
    away (not one a reconnect interval); once an interval, however many come back."""
    names = [f"d{i}" for i in range(8)]
    m = member_view(*names)
    for name in names:
        m.on_dead(Dead(name, 1, "x"), 100.0)
    now = 100.0 + CONFIG.reconnect_interval
    assert len(m.reconnect_targets(now)) == 1
    now += 0.1
    assert m.reconnect_targets(now) == []  # not due
    m.on_alive(Alive("d0", 2, ("10.0.0.1", 0)), now)  # d0 refuted its death: a heal
    assert m.next_reconnect_at == now  # due at once
    tried = m.reconnect_targets(now)
    assert len(tried) == HEAL_BURST
    assert len({t.name for t in tried}) == HEAL_BURST
    assert all(t.state == State.DEAD for t in tried)
    m.on_alive(Alive("d1", 2, ("10.0.0.1", 0)), now + 0.01)  # more come back: no second burst yet
    assert m.reconnect_targets(now + 0.01) == []
    later = now + CONFIG.reconnect_interval
    assert len(m.reconnect_targets(later)) == 1
    m.on_alive(Alive("d2", 2, ("10.0.0.1", 0)), later)
    assert len(m.reconnect_targets(later)) == HEAL_BURST


def test_a_suspect_is_probed_within_two_probes_and_a_stale_accuser_is_told_better():
    m = member_view("a", "b", "c", "d", "e", "f")
    m.on_suspect(Suspect("c", 1, "b"), 0.0)
    targets = []
    for _ in range(2):
        m.tick(m.next_probe_at)
        targets += [msg.target for _, msg in m.take_outbox() if isinstance(msg, Ping)]
        m._probe = None  # answered, as far as this test goes
    assert "c" in targets
    # An accuser still at an incarnation of "a" that "a" refuted: we tell it, directly.
    m.on_alive(Alive("a", 5, ("10.0.0.9", 0)), 1.0)
    m.take_outbox()
    m.on_suspect(Suspect("a", 2, "d"), 2.0)
    assert m.take_outbox() == [(("10.0.0.9", 3), Alive("a", 5, ("10.0.0.9", 0)))]
    assert m.state_of("a") == State.ALIVE


def test_suspects_are_told_so_every_probe_interval_however_poor_our_health():
    """Probes stretched to 8 s by poor health come too seldom after a heal: suspects are told
    directly every probe interval (a few at a time), and answer their accuser directly."""
    m = member_view("a", "b", "c", "d", "e")
    m.awareness = CONFIG.awareness_max - 1  # probes 8 probe intervals apart
    for name in "abcd":
        m.on_suspect(Suspect(name, 1, "e"), 10.0)
    m.take_outbox()
    m.next_probe_at = 10.0 + 8 * CONFIG.probe_interval  # as stretched: reminders only, below
    told: list[str] = []
    for k in range(1, 4):
        assert m.next_deadline() == pytest.approx(10.0 + k * CONFIG.probe_interval)
        m.tick(m.next_deadline())
        told += [msg.node for _, msg in m.take_outbox() if isinstance(msg, Suspect)]
    assert len(told) == 3 * REMINDED_SUSPECTS
    assert set(told) == set("abcd")
    # The suspect's side: told at an incarnation it refuted, it answers us directly.
    a = Membership("a", ("10.0.0.9", 0), CONFIG, random.Random(2), now=0.0, incarnation=3)
    a.on_alive(Alive("me", 1, ("10.0.0.1", 1)), 0.0)
    a.on_suspect(Suspect("a", 1, "me"), 5.0, direct=True)
    assert (("10.0.0.1", 1), Alive("a", 3, ("10.0.0.9", 0))) in a.take_outbox()
    # A relayed accusation (a datagram full of them may be forged) is not answered directly.
    a.on_suspect(Suspect("a", 1, "me"), 7.0)
    assert a.take_outbox() == []


def test_a_member_dead_in_a_peers_view_and_unknown_to_us_is_tried_as_our_own_dead():
    """Joined while it was cut off: we learn it as dead from a push-pull and try it, instead of
    waiting for an Alive in gossip that a lost datagram keeps from us for a push-pull interval."""
    m = member_view("a")
    m.merge_remote((MemberState("z", ("10.0.0.7", 1), 4, int(State.DEAD)),), 10.0)
    assert m.state_of("z") == State.DEAD
    assert m.alive_count == 2  # us and "a"
    assert [t.name for t in m.reconnect_targets(10.0 + CONFIG.reconnect_interval)] == ["z"]
    # Not passed on: members forgotten at different times would teach each other back for ever.
    assert "z" not in {s.node for s in m.snapshot()}
    m.on_alive(Alive("z", 4, ("10.0.0.7", 1)), 12.0)  # its own word at that incarnation: it never refuted
    assert m.state_of("z") == State.ALIVE
    assert "z" in {s.node for s in m.snapshot()}
    # An implausible incarnation (a forged push-pull) is not learnt.
    m.merge_remote((MemberState("y", ("10.0.0.8", 1), 2**62, int(State.DEAD)),), 13.0)
    assert m.state_of("y") is None


def test_a_member_that_left_is_forgotten_in_time_though_no_one_died():
    m = member_view("a", "b")
    m.on_leave(Leave("a", 1), 10.0)
    assert m.next_reconnect_at == 10.0 + CONFIG.reconnect_interval
    assert m.reconnect_targets(m.next_reconnect_at) == []  # no one dead: sleep till it is due
    assert m.next_reconnect_at == 10.0 + CONFIG.dead_retention
    m.reconnect_targets(m.next_reconnect_at + 1)
    assert "a" in m.forgotten


def test_a_datagram_full_of_stale_accusations_gets_one_answer():
    m = member_view("a", "c")
    m.on_alive(Alive("a", 5, ("10.0.0.9", 0)), 1.0)
    m.take_outbox()
    for _ in range(60):
        m.on_suspect(Suspect("a", 2, "c"), 2.0)
    assert len(m.take_outbox()) == 1


def test_a_member_we_hold_dead_that_talks_to_us_is_told_once_a_probe_interval():
    """Its Dead went round while it was stalled: nothing else of ours would reach it but a
    reconnect, to one dead member drawn at random a second."""
    m = member_view("a")
    m.on_dead(Dead("a", 1, "x"), 1.0)
    m.take_broadcasts()
    told = []
    for now in (2.0, 2.1, 2.0 + CONFIG.probe_interval):
        m.heard_from("a", now)
        told += [msg for _, msg in m.take_outbox()]
    assert told == [Dead("a", 1, "me")] * 2
    m.heard_from("me", 9.0)  # no one else: not the living, not ourselves
    assert m.take_outbox() == []


def test_told_we_are_dead_we_refute_to_the_accuser_itself_and_again_if_it_missed_it():
    m = member_view("a")
    m.on_dead(Dead("me", 0, "a"), 1.0, direct=True)
    assert m.incarnation == 1
    assert m.take_outbox() == [(("10.0.0.9", 0), Alive("me", 1, ("10.0.0.1", 1)))]
    m.on_dead(Dead("me", 0, "a"), 1.1 + CONFIG.probe_interval, direct=True)  # it missed our Alive
    assert m.incarnation == 1, "a stale death is answered, not refuted again"
    assert m.take_outbox() == [(("10.0.0.9", 0), Alive("me", 1, ("10.0.0.1", 1)))]
    m.on_dead(Dead("me", 1, "b"), 9.0)  # relayed: refuted, but no datagram straight to anyone
    assert m.incarnation == 2
    assert m.take_outbox() == []
