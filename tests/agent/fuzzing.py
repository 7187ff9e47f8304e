"""A structure-aware fuzzer of the wire: every message type with hostile field values, msgpack type
confusion, extreme integers, deep nesting, huge declared lengths, and byte-level mutations of valid
datagrams and frames. Used by test_fuzz.py (short) and bench/fuzz.py (a million inputs).

Seeded: the same seed gives the same inputs, so a failure replays.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import msgpack

from gossip_agent.core.config import local
from gossip_agent.core.node import Node
from gossip_agent.core.wire import PROTOCOL_VERSION, MessageType, SyncRequest

NAMES = ["a", "b", "c", "net", "other"]
INTS = [0, 1, 2, 255, 256, 65535, 65536, 2**31, 2**32, 2**53, 2**62, 2**63 - 1, 2**63, 2**64 - 1, -1, -(2**63)]


def hostile_value(rng: random.Random, depth: int = 0) -> Any:
    """Any msgpack value, biased to the ones that break validators."""
    kind = rng.randrange(12)
    if kind == 0:
        return rng.choice(INTS)
    if kind == 1:
        return rng.randint(-(2**63), 2**64 - 1) if rng.random() < 0.5 else rng.randint(0, 1000)  # msgpack's range
    if kind == 2:
        return rng.choice(["", "x" * 255, "x" * 256, "é" * 200, "\x00", "198.18.0.1", "::1", "example.com"])
    if kind == 3:
        return rng.choice(NAMES)
    if kind == 4:
        return rng.randbytes(rng.choice([0, 1, 16, 16 * 1024, 16 * 1024 + 1]))
    if kind == 5:
        return rng.choice([None, True, False, 0.5, float("nan"), float("inf")])
    if kind == 6 and depth < 4:
        return [hostile_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    if kind == 7:
        return [rng.choice(NAMES), rng.choice(INTS[:12])]  # an address-like pair
    if kind == 8 and depth < 4:
        return [[rng.choice(NAMES), rng.choice(INTS), rng.choice(INTS[:14])] for _ in range(rng.randrange(4))]
    if kind == 9:
        return {"k": 1}  # maps are not part of the protocol
    return rng.randrange(10)


def plausible_fields(rng: random.Random, kind: MessageType) -> list[Any]:
    """Fields shaped like the real message, each replaced now and then by a hostile value."""
    name, net = rng.choice(NAMES), rng.choice(NAMES)
    inc = rng.choice(INTS[:14])
    addr = [rng.choice(["198.18.0.1", "198.18.0.2", "host", ""]), rng.choice([7946, 0, 65536])]
    event = [net, "ep", rng.choice(["k", "x" * 1025]), rng.randbytes(8), name, inc, rng.choice(INTS[:14]), False]
    shapes: dict[MessageType, list[Any]] = {
        MessageType.PING: [inc, name],
        MessageType.INDIRECT_PING: [inc, name, addr],
        MessageType.ACK: [inc],
        MessageType.NACK: [inc],
        MessageType.ALIVE: [name, inc, addr],
        MessageType.SUSPECT: [name, inc, name],
        MessageType.DEAD: [name, inc, name],
        MessageType.LEAVE: [name, inc],
        MessageType.NODE_NETWORK: [name, net, inc, rng.random() < 0.5],
        MessageType.TABLE_EVENT: event,
        MessageType.NETWORK_DIGEST: [net, rng.choice(INTS), rng.choice(INTS)],
        MessageType.PUSH_PULL: [[[name, addr, inc, rng.randrange(5)]], [[name, net, inc, True]], rng.random() < 0.5],
        MessageType.SYNC_REQUEST: [net, [[name, inc, rng.choice(INTS)]]],
        MessageType.SYNC_RESPONSE: [net, [event], [[name, inc, 0]], [name], True],
        MessageType.SYNC_PUSH: [net, [event], [[name, inc, 0]], [name]],
        MessageType.STREAM_ACK: [],
    }
    fields = shapes[kind]
    if fields and rng.random() < 0.5:
        fields[rng.randrange(len(fields))] = hostile_value(rng)
    if rng.random() < 0.1:
        fields.append(hostile_value(rng))  # one field too many
    return fields


def _mutate(rng: random.Random, data: bytes) -> bytes:
    how = rng.randrange(6)
    if how == 0 and data:
        spot = rng.randrange(len(data))
        return data[:spot] + bytes([rng.randrange(256)]) + data[spot + 1 :]
    if how == 1:
        return data[: rng.randrange(len(data) + 1)]
    if how == 2:  # a container that claims 4 billion items
        spot = rng.randrange(len(data) + 1)
        return (
            data[:spot]
            + rng.choice([b"\xdd\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff"])
            + data[spot:]
        )
    if how == 3:  # deep nesting
        depth = rng.choice([100, 990, 1023, 5000])
        return b"\x93\x01\xa1a\x91" + b"\x91" * depth + b"\x01"
    if how == 4:
        return rng.randbytes(rng.randrange(64))
    return data + rng.randbytes(rng.randrange(1, 9))


def datagrams(seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    datagram_kinds = [k for k in MessageType if k < MessageType.PUSH_PULL]
    while True:
        messages = [[int(k), *plausible_fields(rng, k)] for k in rng.choices(datagram_kinds, k=rng.randint(1, 6))]
        if rng.random() < 0.05:
            messages = [[int(MessageType.PING), 1, "a"]] * rng.choice([100, 4096])  # amplification
        sender = rng.choice([*NAMES, "x" * 300, 7])
        data = msgpack.packb([rng.choice([PROTOCOL_VERSION, PROTOCOL_VERSION, 2]), sender, messages])
        yield _mutate(rng, data) if rng.random() < 0.4 else data


def frames(seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    while True:
        kind = rng.choice(list(MessageType))
        body = [int(kind), *plausible_fields(rng, kind)]
        data = msgpack.packb([PROTOCOL_VERSION, rng.choice(NAMES), body])
        yield _mutate(rng, data) if rng.random() < 0.4 else data


def target() -> Node:
    """A node in two networks with a few members and entries: every handler has state to hit."""
    node = Node("a", ("198.18.0.1", 7946), local(), random.Random(1), 0.0)
    for network in ("net", "other"):
        node.attach(network, 0.0)
        node.write(network, "ep", "mine", b"v", 0.0, 0)
    return node


def feed_frame(node: Node, data: bytes, now: float) -> None:
    """Deliver one frame every way a node takes frames: as a stream a peer opened (with a push
    expected from every name, so pushes get past the solicitation check), and as the reply to a
    sync this node opened in each network; then merge whatever was queued, slice by slice, which
    is where a sync's entries are validated."""
    for name in NAMES:
        for network in ("net", "other"):
            node._expect_push(name, network, now)
    node.handle_stream(data, now)
    for network in ("net", "other"):
        request = SyncRequest(network, {})
        sid = node._open_stream("sync", ("198.18.0.2", 7946), request, now, "b", network, "periodic")
        node.on_stream_reply(sid, data, now)
    while node.busy:
        node.tick(now)
    node.take_datagrams()
    node.take_streams()
    node.take_changes()
