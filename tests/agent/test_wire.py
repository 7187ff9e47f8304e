"""The codec round-trips every message and turns any bad input into RemoteProtocolError only."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip_agent.core import wire
from gossip_agent.core.errors import RemoteProtocolError

EVENT = wire.TableEvent("net-a", "endpoints", "ep-1", b"198.19.0.1", "w1", 7, 1_700_000_000_000, False)
DATAGRAM_MESSAGES = [
    wire.Ping(1, "w2"),
    wire.IndirectPing(2, "w3", ("198.18.0.3", 7946)),
    wire.Ack(1),
    wire.Nack(2),
    wire.Alive("w1", 3, ("198.18.0.1", 7946)),
    wire.Suspect("w2", 1, "w1"),
    wire.Dead("w2", 1, "w1"),
    wire.Leave("w1", 3),
    wire.NodeNetwork("w1", "net-a", 4, True),
    EVENT,
    wire.NetworkDigest("net-a", 2**64 - 1, 10),
]
STREAM_MESSAGES = [
    wire.PushPull((wire.MemberState("w1", ("198.18.0.1", 7946), 2, 0),), (wire.NodeNetwork("w1", "n", 1, True),), True),
    wire.SyncRequest("net-a", {"w1": (7, 12345)}),
    wire.SyncRequest("net-a", {"w1": (7, 12345)}, {"w1": frozenset({8, 2**60})}),
    wire.SyncResponse("net-a", (EVENT,), {"w1": (7, 1)}, ("w1",), True),
    wire.SyncResponse("net-a", (EVENT,), {"w1": (7, 1)}, ("w1",), True, {"w2": frozenset({9})}),
    wire.SyncPush("net-a", (EVENT,), {}, ()),
    wire.StreamAck(),
]


def test_datagram_round_trip_keeps_every_message():
    data = wire.encode_datagram("w1", DATAGRAM_MESSAGES)
    assert wire.decode_datagram(data) == ("w1", DATAGRAM_MESSAGES)


@pytest.mark.parametrize("message", STREAM_MESSAGES, ids=lambda m: type(m).__name__)
def test_stream_frame_round_trip(message):
    assert wire.decode_frame(wire.encode_frame("w9", message), 1 << 20) == ("w9", message)


def test_assembled_datagram_is_exactly_the_sum_of_its_parts():
    encoded = [wire.encode_message(m) for m in DATAGRAM_MESSAGES]
    header = wire.datagram_header("w1")
    data = wire.assemble_datagram(header, encoded)
    assert len(data) == len(header) + 1 + sum(map(len, encoded))  # 11 messages: one-byte array header
    assert data == wire.encode_datagram("w1", DATAGRAM_MESSAGES)


def test_message_type_numbers_are_the_protocol():
    # Only append: renumbering breaks every deployed agent.
    assert [(t.name, t.value) for t in wire.MessageType][:10] == [
        ("PING", 1), ("INDIRECT_PING", 2), ("ACK", 3), ("NACK", 4), ("ALIVE", 5),
        ("SUSPECT", 6), ("DEAD", 7), ("LEAVE", 8), ("NODE_NETWORK", 9), ("TABLE_EVENT", 10),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "malformed"),
        (b"\xc1", "malformed"),  # never-used msgpack byte
        (msgpack.packb([2, "w1", []]), "version"),
        (msgpack.packb([1, "w1", [[99]]]), "unknown_type"),
        (msgpack.packb([1, "w1", [[3, "not-an-int"]]]), "malformed"),
        (msgpack.packb([1, "w1", [[10, "n", "t", "k", b"v", "o", 0, 0, False]]]), "malformed"),  # lamport 0
        (msgpack.packb([1, "w1", [[12, [], [], True]]]), "unknown_type"),  # a stream message in a datagram
        (msgpack.packb([1, "w1", {"a": 1}]), "malformed"),
        (msgpack.packb([1, True, []]), "malformed"),
        (b"\x91" * 5000, "malformed"),  # nested 5,000 deep
        (b"\x00" * 70_000, "too_large"),
    ],
)
def test_bad_datagrams_raise_remote_protocol_error_with_reason(raw, reason):
    with pytest.raises(RemoteProtocolError) as info:
        wire.decode_datagram(raw)
    assert info.value.reason == reason


def test_frame_limit_is_enforced():
    frame = wire.encode_frame("w1", wire.SyncPush("n", (EVENT,) * 100, {}, ()))
    with pytest.raises(RemoteProtocolError, match="exceed"):
        wire.decode_frame(frame, 1000)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_else(data):
    try:
        wire.decode_datagram(data)
    except RemoteProtocolError:
        pass
    try:
        wire.decode_frame(data, 1 << 16)
    except RemoteProtocolError:
        pass


VALID = wire.encode_datagram("w1", DATAGRAM_MESSAGES)


@settings(max_examples=2000, deadline=None)
@given(st.data())
def test_mutated_datagrams_decode_or_raise_remote_protocol_error(data):
    raw = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 8))):
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if action == "flip" and raw:
            raw[pos] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del raw[pos:]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        sender, messages = wire.decode_datagram(bytes(raw))
    except RemoteProtocolError:
        return
    # Whatever decodes is a list of valid messages that encode again.
    assert isinstance(sender, str)
    assert all(isinstance(m, wire.Message) for m in messages)
    wire.encode_datagram(sender, messages)


def test_sync_messages_of_agents_that_send_no_held_versions_still_decode():
    old_request = [int(wire.MessageType.SYNC_REQUEST), "net-a", [["w1", 7, 1]]]
    old_response = [int(wire.MessageType.SYNC_RESPONSE), "net-a", [], [["w1", 7, 1]], [], True]
    for body in (old_request, old_response):
        data = msgpack.packb([wire.PROTOCOL_VERSION, "w2", body], use_bin_type=True)
        _, message = wire.decode_frame(data, 1 << 20)
        assert message.held == {}


def test_too_many_held_versions_are_refused():
    held = [["w1", list(range(wire.MAX_HELD))], ["w2", [1]]]
    body = [int(wire.MessageType.SYNC_REQUEST), "net-a", [], held]
    data = msgpack.packb([wire.PROTOCOL_VERSION, "w2", body], use_bin_type=True)
    with pytest.raises(RemoteProtocolError):
        wire.decode_frame(data, 1 << 24)


def test_sync_messages_without_held_versions_keep_the_old_shape():
    request = msgpack.unpackb(wire.encode_frame("w1", wire.SyncRequest("n", {})))
    response = msgpack.unpackb(wire.encode_frame("w1", wire.SyncResponse("n", (), {}, (), True)))
    assert (len(request[2]), len(response[2])) == (1 + 2, 1 + 5)  # type + fields, as before `held`
