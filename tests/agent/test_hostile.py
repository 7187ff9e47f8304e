"""The review's protocol bugs, one hand-written test each where a few wired Nodes show it plainly
(the generated runs find the same bugs; see test_generated.py). Each failed before its fix."""

from __future__ import annotations

import msgpack
import pytest

from gossip_agent.core.table import NetworkTable
from gossip_agent.core.wire import (
    MAX_INT,
    Alive,
    NodeNetwork,
    Suspect,
    SyncPush,
    SyncResponse,
    TableEvent,
    encode_datagram,
    encode_frame,
)
from tests.agent.test_node import Wire


@pytest.fixture
def trio() -> Wire:
    wire = Wire(["a", "b", "c"])
    wire.form({"net": ["a", "b", "c"]})
    for i in range(20):
        wire.nodes["c"].write("net", "ep", f"c{i}", b"v", wire.now, 0)
    wire.run(2.0)
    assert wire.keys("a", "net") == {f"c{i}" for i in range(20)}
    return wire


def send(wire: Wire, to: str, sender: str, *messages) -> None:
    wire.nodes[to].handle_datagram(wire.addresses[sender], encode_datagram(sender, list(messages)), wire.now)
    wire.deliver()


def test_an_owner_answers_a_forged_entry_in_its_name_instead_of_adopting_it(trio):
    forged = TableEvent("net", "ep", "c0", b"forged", "c", 1_000, 0, False)
    send(trio, "a", "b", forged)
    send(trio, "c", "b", forged)
    trio.run(3.0)
    for name in "abc":
        held = trio.nodes[name].networks["net"].table.get("ep", "c0")
        assert held.event.value == b"v", name  # the owner's value won back, everywhere
    assert trio.nodes["c"].stats["own_reasserted"] >= 1


def test_an_absurd_lamport_time_is_dropped_and_the_node_keeps_writing(trio):
    send(trio, "a", "b", TableEvent("net", "ep", "c1", b"v", "c", MAX_INT, 0, False))
    send(trio, "a", "b", NodeNetwork("b", "net", MAX_INT, False))
    a = trio.nodes["a"]
    assert a.stats["dropped_clock_jump"] == 2
    assert a.clock.time < 2**40
    a.write("net", "ep", "later", b"x", trio.now, 0)
    trio.run(2.0)
    assert "later" in trio.keys("c", "net")
    assert "b" in a.peers_in("net")  # the forged detach of b was not believed


def test_an_absurd_incarnation_neither_kills_a_member_nor_makes_it_refute(trio):
    send(trio, "a", "b", Suspect("c", MAX_INT, "b"))
    send(trio, "c", "b", Suspect("c", MAX_INT, "b"))
    trio.run(30.0)
    assert trio.nodes["c"].membership.incarnation < 2**32
    assert trio.nodes["a"].membership.state_of("c").name == "ALIVE"
    assert trio.nodes["a"].stats["dropped_implausible_incarnation"] == 1
    assert trio.keys("a", "net") == {f"c{i}" for i in range(20)}


def test_an_unsolicited_sync_push_cannot_erase_an_owner(trio):
    push = SyncPush("net", (), {"c": (MAX_INT, 0)}, ("c",))
    a = trio.nodes["a"]
    assert a.handle_stream(encode_frame("mallory", push), trio.now) == b""  # it never asked for a sync
    assert a.stats["dropped_stream_unsolicited"] == 1
    assert trio.keys("a", "net") == {f"c{i}" for i in range(20)}


def test_a_sync_response_for_another_network_is_not_absorbed(trio):
    a = trio.nodes["a"]
    a.attach("other", trio.now)  # no member to sync with: nothing is asked
    a._start_sync("net", a.networks["net"], "b", trio.now, "periodic")
    (request,) = a.take_streams()
    wrong = SyncResponse("other", (TableEvent("other", "ep", "x", b"v", "b", 5, 0, False),), {}, (), True)
    a.on_stream_reply(request.id, encode_frame("b", wrong), trio.now)
    assert a.stats["dropped_stream_wrong_network"] == 1
    assert trio.keys("a", "other") == set()


def test_a_dead_owner_is_withdrawn_even_without_its_attachment_record(trio):
    a = trio.nodes["a"]
    del a.attachments[("c", "net")]  # its entries came by sync before the record
    trio.nodes.pop("c")  # c dies
    trio.run(40.0)
    assert a.membership.state_of("c").name == "DEAD"
    assert trio.keys("a", "net") == set()


def test_a_rumour_replayed_after_the_tombstone_was_reaped_is_refused(trio):
    c, a = trio.nodes["c"], trio.nodes["a"]
    created = c.networks["net"].table.get("ep", "c2").event
    c.delete("net", "ep", "c2", trio.now, 0)
    trio.run(1.0)
    table = a.networks["net"].table
    assert table.reap(trio.now + 10**6, 1.0) >= 1  # the tombstone is gone
    send(trio, "a", "b", created)
    assert "c2" not in trio.keys("a", "net")
    assert a.stats["dropped_reaped"] == 1


def test_an_owner_does_not_take_back_its_tombstone_once_reaped(trio):
    c = trio.nodes["c"]
    c.delete("net", "ep", "c2", trio.now, 0)
    trio.run(1.0)
    tombstone = c.networks["net"].table.get("ep", "c2").event
    assert c.networks["net"].table.reap(trio.now + 10**6, 1.0) >= 1
    send(trio, "c", "b", tombstone)  # from a member that took it later, say
    assert c.networks["net"].table.get("ep", "c2") is None
    assert c.stats["dropped_reaped"] == 1


def test_two_values_at_one_version_have_different_digests_and_one_winner():
    one, two = NetworkTable("net"), NetworkTable("net")
    first = TableEvent("net", "ep", "k", b"one", "o", 7, 0, False)
    second = TableEvent("net", "ep", "k", b"two", "o", 7, 0, False)
    one.apply(first, 0.0)
    two.apply(second, 0.0)
    assert one.digest != two.digest
    one.apply(second, 1.0)
    two.apply(first, 1.0)
    assert one.digest == two.digest
    assert one.get("ep", "k").event == two.get("ep", "k").event


def test_an_alive_with_a_host_name_for_address_is_refused(trio):
    a = trio.nodes["a"]
    before = a.membership.members["c"].addr
    datagram = encode_datagram("b", [Alive("c", 99, ("example.com", 7946))])
    a.handle_datagram(trio.addresses["b"], datagram, trio.now)
    assert a.stats["dropped_malformed"] == 1
    assert a.membership.members["c"].addr == before


def test_detach_records_are_reaped_with_tombstones_and_push_pull_stays_decodable(trio):
    a = trio.nodes["a"]
    before = len(a.attachments)
    records = [NodeNetwork("b", f"gone-{i}", 10_000 + i, False) for i in range(200)]
    for start in range(0, 200, 50):
        send(trio, "a", "b", *records[start : start + 50])
    assert len(a.attachments) == before + 200
    trio.run(a.config.tombstone_ttl + 61.0, step=1.0)
    assert len(a.attachments) == before
    assert "b" in a.peers_in("net")  # the live record of b stays


def test_a_stream_frame_whose_type_is_a_map_is_refused(trio):
    """Found by bench/fuzz.py: an empty map as the message type raised TypeError (unhashable)."""
    a = trio.nodes["a"]
    assert a.handle_stream(msgpack.packb([1, "b", [{}, "net"]]), trio.now) == b""
    assert a.stats["dropped_stream_unknown_type"] == 1
