"""Messages and their msgpack codec: the only module that sees raw bytes.

A datagram is `[version, sender, [message, ...]]`; a stream frame is `[version, sender, message]`.
A message is a msgpack array `[type, field, ...]`, positional for compactness. Messages are encoded
once (when queued) and datagrams are assembled by concatenating encoded messages behind an array
header, so packing many events into one datagram costs no re-encoding and its size is exact.

Decoding validates every field (a sync's entries when they are read, see `WireEntries`); anything
wrong raises `RemoteProtocolError` and nothing else.
"""

from __future__ import annotations

import enum
import reprlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from sys import intern
from typing import Any, ClassVar, Self, overload

import msgpack

from .errors import OutOfScope, RemoteProtocolError

PROTOCOL_VERSION = 1

MAX_NAME = 255  # node, network, table names
MAX_KEY = 1024
MAX_VALUE = 16 * 1024
MAX_DATAGRAM = 65_507  # largest UDP payload over IPv4
MAX_MESSAGES_PER_DATAGRAM = 4096
MAX_STREAM_ITEMS = 2_000_000
# A cluster larger than this is refused: one frame naming millions of members or owners would
# block the loop for seconds while it is validated (a PushPull of 200,000 members took 5 s).
MAX_MEMBERS = 16_384
MAX_ATTACHMENTS = 16 * MAX_MEMBERS
MAX_HELD = 65_536  # Lamport times a sync message may list as held above its marks (~600 KB)
MAX_INT = 2**63 - 1

Address = tuple[str, int]


class MessageType(enum.IntEnum):
    """Only append: the numbers are the protocol."""

    PING = 1
    INDIRECT_PING = 2
    ACK = 3
    NACK = 4
    ALIVE = 5
    SUSPECT = 6
    DEAD = 7
    LEAVE = 8
    NODE_NETWORK = 9
    TABLE_EVENT = 10
    NETWORK_DIGEST = 11
    PUSH_PULL = 12
    SYNC_REQUEST = 13
    SYNC_RESPONSE = 14
    SYNC_PUSH = 15
    STREAM_ACK = 16


# --- field validators: each returns the value or raises RemoteProtocolError ---------------------

_short = reprlib.Repr()
_short.maxlevel, _short.maxlist, _short.maxstring, _short.maxother = 3, 4, 40, 40


def _fail(what: str, value: Any) -> RemoteProtocolError:
    shown = _short.repr(value)  # bounded: a deeply nested value must not recurse in repr
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return RemoteProtocolError(f"bad {what}: {shown}", "malformed")


def _str(value: Any, what: str, limit: int = MAX_NAME, empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > limit or (not value and not empty):
        raise _fail(what, value)
    return value


def _int(value: Any, what: str, low: int = 0, high: int = MAX_INT) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _fail(what, value)
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(what, value)
    return value


def _bytes(value: Any, what: str, limit: int = MAX_VALUE) -> bytes:
    if not isinstance(value, bytes) or len(value) > limit:
        raise _fail(what, value)
    return value


def _list(value: Any, what: str, limit: int = MAX_STREAM_ITEMS) -> list[Any]:
    if not isinstance(value, list) or len(value) > limit:
        raise _fail(what, value)
    return value


def _addr(value: Any, what: str) -> Address:
    """An IP literal and a port: a host name would make every send to it resolve (or fail) in
    the loop, and could take over a live member's address."""
    items = _list(value, what, 2)
    if len(items) != 2:
        raise _fail(what, value)
    host = _str(items[0], what + " host", 45)
    try:
        ip_address(host)
    except ValueError:
        raise _fail(what + " host (not an IP address)", host) from None
    return host, _int(items[1], what + " port", 1, 65535)


def _fields(raw: list[Any], count: int, what: str) -> list[Any]:
    if len(raw) != count:
        raise RemoteProtocolError(f"{what} needs {count} fields, got {len(raw)}", "malformed")
    return raw


# --- messages ----------------------------------------------------------------------------------


class Message:
    """Base of every message: `to_wire` gives the field list, `from_wire` validates one."""

    TYPE: ClassVar[MessageType]

    def to_wire(self) -> list[Any]:
        raise NotImplementedError

    @classmethod
    def from_wire(cls, raw: list[Any]) -> Message:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Ping(Message):
    TYPE: ClassVar[MessageType] = MessageType.PING
    seq: int
    target: str  # the name we believe answers at this address; a mismatch is not acked

    def to_wire(self) -> list[Any]:
        return [self.seq, self.target]

    @classmethod
    def from_wire(cls, raw: list[Any]) -> Ping:
        seq, target = _fields(raw, 2, "ping")
        return cls(_int(seq, "seq"), _str(target, "target"))


@dataclass(frozen=True, slots=True)
class IndirectPing(Message):
    TYPE: ClassVar[MessageType] = MessageType.INDIRECT_PING
    seq: int
    target: str
    target_addr: Address

    def to_wire(self) -> list[Any]:
        return [self.seq, self.target, list(self.target_addr)]

    @classmethod
    def from_wire(cls, raw: list[Any]) -> IndirectPing:
        seq, target, addr = _fields(raw, 3, "indirect ping")
        return cls(_int(seq, "seq"), _str(target, "target"), _addr(addr, "target address"))


@dataclass(frozen=True, slots=True)
class _SeqReply(Message):
    seq: int

    def to_wire(self) -> list[Any]:
        return [self.seq]

    @classmethod
    def from_wire(cls, raw: list[Any]) -> Self:
        (seq,) = _fields(raw, 1, cls.TYPE.name.lower())
        return cls(_int(seq, "seq"))


@dataclass(frozen=True, slots=True)
class Ack(_SeqReply):
    TYPE: ClassVar[MessageType] = MessageType.ACK


@dataclass(frozen=True, slots=True)
class Nack(_SeqReply):
    """An indirect probe's helper got no ack from the target (Lifeguard)."""

    TYPE: ClassVar[MessageType] = MessageType.NACK


@dataclass(frozen=True, slots=True)
class Alive(Message):
    TYPE: ClassVar[MessageType] = MessageType.ALIVE
    node: str
    incarnation: int
    addr: Address

    def to_wire(self) -> list[Any]:
        return [self.node, self.incarnation, list(self.addr)]

    @classmethod
    def from_wire(cls, raw: list[Any]) -> Alive:
        node, inc, addr = _fields(raw, 3, "alive")
        return cls(_str(node, "node"), _int(inc, "incarnation"), _addr(addr, "address"))


@dataclass(frozen=True, slots=True)
class _Accusation(Message):
    """`by` holds `node` at `incarnation` to be suspect, or dead."""

    node: str
    incarnation: int
    by: str

    def to_wire(self) -> list[Any]:
        return [self.node, self.incarnation, self.by]

    @classmethod
    def from_wire(cls, raw: list[Any]) -> Self:
        node, inc, by = _fields(raw, 3, cls.TYPE.name.lower())
        return cls(_str(node, "node"), _int(inc, "incarnation"), _str(by, "by"))


@dataclass(frozen=True, slots=True)
class Suspect(_Accusation):
    TYPE: ClassVar[MessageType] = MessageType.SUSPECT


@dataclass(frozen=True, slots=True)
class Dead(_Accusation):
    TYPE: ClassVar[MessageType] = MessageType.DEAD


@dataclass(frozen=True, slots=True)
class Leave(Message):
    TYPE: ClassVar[MessageType] = MessageType.LEAVE
    node: str
    incarnation: int

    def to_wire(self) -> list[Any]:
        return [self.node, self.incarnation]

    @classmethod
    def from_wire(cls, raw: list[Any]) -> Leave:
        node, inc = _fields(raw, 2, "leave")
        return cls(_str(node, "node"), _int(inc, "incarnation"))


@dataclass(frozen=True, slots=True)
class NodeNetwork(Message):
    """A node attached to (or detached from) a network, at the node's Lamport time."""

    TYPE: ClassVar[MessageType] = MessageType.NODE_NETWORK
    node: str
    network: str
    lamport: int
    attached: bool

    def to_wire(self) -> list[Any]:
        return [self.node, self.network, self.lamport, self.attached]

    @classmethod
    def from_wire(cls, raw: list[Any]) -> NodeNetwork:
        node, network, lamport, attached = _fields(raw, 4, "node-network")
        return cls(
            _str(node, "node"),
            _str(network, "network"),
            _int(lamport, "lamport"),
            _bool(attached, "attached"),
        )


@dataclass(frozen=True, slots=True)
class TableEvent(Message):
    """One version of one entry: (network, table, key) -> value, written by `owner`."""

    TYPE: ClassVar[MessageType] = MessageType.TABLE_EVENT
    network: str
    table: str
    key: str
    value: bytes
    owner: str
    lamport: int
    wall_ms: int  # the owner's wall clock at the write: latency figures, and a delete's age (`NetworkTable.reap`)
    deleted: bool

    def to_wire(self) -> list[Any]:
        return [
            self.network,
            self.table,
            self.key,
            self.value,
            self.owner,
            self.lamport,
            self.wall_ms,
            self.deleted,
        ]

    @classmethod
    def from_wire(cls, raw: list[Any]) -> TableEvent:
        network, table, key, value, owner, lamport, wall, deleted = _fields(raw, 8, "table event")
        # Interned: thousands of entries share a few network, table and owner names.
        return cls(
            intern(_str(network, "network")),
            intern(_str(table, "table")),
            _str(key, "key", MAX_KEY),
            _bytes(value, "value"),
            intern(_str(owner, "owner")),
            _int(lamport, "lamport", 1),
            _int(wall, "wall time"),
            _bool(deleted, "deleted"),
        )


@dataclass(frozen=True, slots=True)
class NetworkDigest(Message):
    """A summary of the sender's table for one network: if ours differs, one of us is behind."""

    TYPE: ClassVar[MessageType] = MessageType.NETWORK_DIGEST
    network: str
    digest: int  # XOR of every live entry's and tombstone's 64-bit hash
    count: int

    def to_wire(self) -> list[Any]:
        return [self.network, self.digest, self.count]

    @classmethod
    def from_wire(cls, raw: list[Any]) -> NetworkDigest:
        network, digest, count = _fields(raw, 3, "network digest")
        return cls(_str(network, "network"), _int(digest, "digest", 0, 2**64 - 1), _int(count, "count"))


@dataclass(frozen=True, slots=True)
class MemberState:
    """One member as a push-pull carries it (not a message of its own)."""

    node: str
    addr: Address
    incarnation: int
    state: int  # membership.State value

    def to_wire(self) -> list[Any]:
        return [self.node, list(self.addr), self.incarnation, self.state]

    @classmethod
    def from_wire(cls, raw: Any) -> MemberState:
        node, addr, inc, state = _fields(_list(raw, "member", 4), 4, "member")
        return cls(_str(node, "node"), _addr(addr, "address"), _int(inc, "incarnation"), _int(state, "state", 0, 3))


@dataclass(frozen=True, slots=True)
class PushPull(Message):
    """Full membership state, both directions; `join` marks the first exchange of a new node."""

    TYPE: ClassVar[MessageType] = MessageType.PUSH_PULL
    members: tuple[MemberState, ...]
    attachments: tuple[NodeNetwork, ...]
    join: bool

    def to_wire(self) -> list[Any]:
        return [[m.to_wire() for m in self.members], [a.to_wire() for a in self.attachments], self.join]

    @classmethod
    def from_wire(cls, raw: list[Any]) -> PushPull:
        members, attachments, join = _fields(raw, 3, "push-pull")
        return cls(
            tuple(MemberState.from_wire(m) for m in _list(members, "members", MAX_MEMBERS)),
            tuple(
                NodeNetwork.from_wire(_list(a, "attachment", 4))
                for a in _list(attachments, "attachments", MAX_ATTACHMENTS)
            ),
            _bool(join, "join"),
        )


OwnerDigest = dict[str, tuple[int, int]]  # owner -> (complete-up-to Lamport time, hash of its entries)


def _digest_to_wire(digest: OwnerDigest) -> list[Any]:
    return [[owner, mark, hashed] for owner, (mark, hashed) in sorted(digest.items())]


def _digest_from_wire(raw: Any) -> OwnerDigest:
    result: OwnerDigest = {}
    for item in _list(raw, "owner digest", MAX_MEMBERS):
        owner, mark, hashed = _fields(_list(item, "owner digest item", 3), 3, "owner digest item")
        result[_str(owner, "owner")] = (_int(mark, "watermark"), _int(hashed, "owner hash", 0, 2**64 - 1))
    return result


Held = dict[str, frozenset[int]]  # owner -> Lamport times of its versions held above the mark sent


def _held_to_wire(held: Held) -> list[Any]:
    return [[owner, sorted(times)] for owner, times in sorted(held.items())]


def _held_from_wire(raw: Any) -> Held:
    result: Held = {}
    total = 0
    for item in _list(raw, "held", MAX_MEMBERS):
        owner, times = _fields(_list(item, "held item", 2), 2, "held item")
        times = _list(times, "held times", MAX_HELD)
        total += len(times)
        if total > MAX_HELD:
            raise _fail("held times in all", total)
        result[_str(owner, "owner")] = frozenset(_int(t, "held time") for t in times)
    return result


class WireEntries(Sequence[TableEvent]):
    """A sync message's entries as they came off the wire, each validated when it is read.

    A sync can carry 100,000 entries; validating them all while decoding the frame took ~0.7 s
    in one callback, long enough for peers to suspect us. The node reads them a slice at a time
    between other work instead, and a malformed entry raises `RemoteProtocolError` when it is
    reached (the entries before it were valid on their own, as a datagram's events are)."""

    __slots__ = ("_raw", "network")

    def __init__(self, raw: Any, network: str) -> None:
        self._raw = _list(raw, "entries")
        self.network = network

    def __len__(self) -> int:
        return len(self._raw)

    def _event(self, item: Any) -> TableEvent:
        event = TableEvent.from_wire(_list(item, "entry", 8))
        if event.network != self.network:
            raise RemoteProtocolError(f"entry of network {event.network!r} in a sync of {self.network!r}", "malformed")
        return event

    @overload
    def __getitem__(self, index: int) -> TableEvent: ...
    @overload
    def __getitem__(self, index: slice) -> list[TableEvent]: ...
    def __getitem__(self, index: int | slice) -> TableEvent | list[TableEvent]:
        if isinstance(index, slice):
            return [self._event(item) for item in self._raw[index]]
        return self._event(self._raw[index])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"WireEntries({len(self)} entries of {self.network!r})"


@dataclass(frozen=True, slots=True)
class SyncRequest(Message):
    """Start of a network's delta sync: the initiator's per-owner digest, and the versions it
    holds above its marks (they came by the tree; its marks rise only by sync), which the
    responder does not send again."""

    TYPE: ClassVar[MessageType] = MessageType.SYNC_REQUEST
    network: str
    digest: OwnerDigest
    held: Held = field(default_factory=dict)

    def to_wire(self) -> list[Any]:
        # Without held versions, the shape agents before them decode (a rolling upgrade).
        tail = [_held_to_wire(self.held)] if self.held else []
        return [self.network, _digest_to_wire(self.digest), *tail]

    @classmethod
    def from_wire(cls, raw: list[Any]) -> SyncRequest:
        if len(raw) == 2:  # an agent from before held versions were sent
            raw = [*raw, []]
        network, digest, held = _fields(raw, 3, "sync request")
        return cls(_str(network, "network"), _digest_from_wire(digest), _held_from_wire(held))


@dataclass(frozen=True, slots=True)
class SyncResponse(Message):
    """What the initiator lacks, the responder's digest and held versions (so the initiator can
    push back what the responder lacks), and the owners whose entries are sent in full because
    tombstones the initiator never saw were reaped."""

    TYPE: ClassVar[MessageType] = MessageType.SYNC_RESPONSE
    network: str
    entries: Sequence[TableEvent]  # decoded: WireEntries, validated as they are read
    digest: OwnerDigest
    full_owners: tuple[str, ...]
    member: bool  # False: the responder is not in this network (any more)
    held: Held = field(default_factory=dict)

    def to_wire(self) -> list[Any]:
        return [
            self.network,
            [e.to_wire() for e in self.entries],
            _digest_to_wire(self.digest),
            list(self.full_owners),
            self.member,
            *([_held_to_wire(self.held)] if self.held else []),  # as SyncRequest
        ]

    @classmethod
    def from_wire(cls, raw: list[Any]) -> SyncResponse:
        if len(raw) == 5:  # an agent from before held versions were sent
            raw = [*raw, []]
        network, entries, digest, full, member, held = _fields(raw, 6, "sync response")
        name = _str(network, "network")
        return cls(
            name,
            WireEntries(entries, name),
            _digest_from_wire(digest),
            tuple(_str(o, "owner") for o in _list(full, "full owners")),
            _bool(member, "member"),
            _held_from_wire(held),
        )


@dataclass(frozen=True, slots=True)
class SyncPush(Message):
    """Second half of a sync: what the responder lacks."""

    TYPE: ClassVar[MessageType] = MessageType.SYNC_PUSH
    network: str
    entries: Sequence[TableEvent]  # decoded: WireEntries, validated as they are read
    digest: OwnerDigest
    full_owners: tuple[str, ...]

    def to_wire(self) -> list[Any]:
        return [self.network, [e.to_wire() for e in self.entries], _digest_to_wire(self.digest), list(self.full_owners)]

    @classmethod
    def from_wire(cls, raw: list[Any]) -> SyncPush:
        network, entries, digest, full = _fields(raw, 4, "sync push")
        name = _str(network, "network")
        return cls(
            name,
            WireEntries(entries, name),
            _digest_from_wire(digest),
            tuple(_str(o, "owner") for o in _list(full, "full owners")),
        )


@dataclass(frozen=True, slots=True)
class StreamAck(Message):
    """The reply to a stream that needs no other answer."""

    TYPE: ClassVar[MessageType] = MessageType.STREAM_ACK

    def to_wire(self) -> list[Any]:
        return []

    @classmethod
    def from_wire(cls, raw: list[Any]) -> StreamAck:
        _fields(raw, 0, "stream ack")
        return cls()


_DECODERS: dict[int, Callable[[list[Any]], Message]] = {
    cls.TYPE: cls.from_wire
    for cls in (
        Ping,
        IndirectPing,
        Ack,
        Nack,
        Alive,
        Suspect,
        Dead,
        Leave,
        NodeNetwork,
        TableEvent,
        NetworkDigest,
        PushPull,
        SyncRequest,
        SyncResponse,
        SyncPush,
        StreamAck,
    )
}
DATAGRAM_TYPES = frozenset(
    {
        MessageType.PING,
        MessageType.INDIRECT_PING,
        MessageType.ACK,
        MessageType.NACK,
        MessageType.ALIVE,
        MessageType.SUSPECT,
        MessageType.DEAD,
        MessageType.LEAVE,
        MessageType.NODE_NETWORK,
        MessageType.TABLE_EVENT,
        MessageType.NETWORK_DIGEST,
    }
)


# --- codec -------------------------------------------------------------------------------------


def encode_message(message: Message) -> bytes:
    """One message, ready to be concatenated into a datagram."""
    data: bytes = msgpack.packb([int(message.TYPE), *message.to_wire()], use_bin_type=True)
    return data


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x90 | count])
    if count < 65536:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def datagram_header(sender: str) -> bytes:
    """The fixed prefix of every datagram from `sender` (envelope array, version, sender)."""
    name: bytes = msgpack.packb(sender, use_bin_type=True)
    return b"\x93" + bytes([PROTOCOL_VERSION]) + name


def assemble_datagram(header: bytes, encoded: Sequence[bytes]) -> bytes:
    """A datagram from a header and already-encoded messages, without re-encoding them."""
    return header + _array_header(len(encoded)) + b"".join(encoded)


def encode_datagram(sender: str, messages: Sequence[Message]) -> bytes:
    return assemble_datagram(datagram_header(sender), [encode_message(m) for m in messages])


def _unpack(data: bytes, max_len: int) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise RemoteProtocolError("input is not bytes", "malformed")
    if len(data) > max_len:
        raise RemoteProtocolError(f"{len(data)} bytes exceed the limit of {max_len}", "too_large")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=max_len,
            max_str_len=max_len,
            max_array_len=MAX_STREAM_ITEMS,
            max_map_len=0,  # the protocol has no maps
            max_ext_len=0,
        )
    except RemoteProtocolError:
        raise
    except Exception as exc:  # msgpack raises many kinds (ValueError, ExtraData, StackError, ...)
        raise RemoteProtocolError(f"undecodable msgpack: {type(exc).__name__}", "malformed") from None


def _envelope(raw: Any) -> tuple[str, Any]:
    if not isinstance(raw, list) or len(raw) != 3:
        raise RemoteProtocolError("envelope is not [version, sender, body]", "malformed")
    version, sender, body = raw
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise RemoteProtocolError(f"unsupported protocol version {_short.repr(version)}", "version")
    return _str(sender, "sender"), body


def _message(raw: Any, allowed: frozenset[MessageType] | None) -> Message:
    if not isinstance(raw, list) or not raw:
        raise _fail("message", raw)
    kind = raw[0]
    if not isinstance(kind, int) or isinstance(kind, bool) or kind not in _DECODERS:
        raise RemoteProtocolError(f"unknown message type {_short.repr(kind)}", "unknown_type")
    if allowed is not None and kind not in allowed:
        raise RemoteProtocolError(f"message type {MessageType(kind).name} not allowed here", "unknown_type")
    return _DECODERS[kind](raw[1:])


def decode_datagram(data: bytes) -> tuple[str, list[Message]]:
    """(sender, messages) of one datagram; raises RemoteProtocolError on anything invalid."""
    sender, body = _envelope(_unpack(data, MAX_DATAGRAM))
    items = _list(body, "message list", MAX_MESSAGES_PER_DATAGRAM)
    return sender, [_message(item, DATAGRAM_TYPES) for item in items]


def encode_frame(sender: str, message: Message) -> bytes:
    """One stream frame (the transport adds the length prefix)."""
    data: bytes = msgpack.packb([PROTOCOL_VERSION, sender, [int(message.TYPE), *message.to_wire()]], use_bin_type=True)
    return data


SYNC_TYPES = frozenset({MessageType.SYNC_REQUEST, MessageType.SYNC_RESPONSE, MessageType.SYNC_PUSH})
STREAM_PROBE_TYPES = frozenset({MessageType.PING, MessageType.ACK})  # the fallback probe and its answer


def decode_frame(data: bytes, max_bytes: int, in_scope: Callable[[str], bool] | None = None) -> tuple[str, Message]:
    """(sender, message) of one stream frame. A sync frame of a network `in_scope` refuses is
    dropped before its entries are validated, which is most of the cost of a large frame."""
    sender, body = _envelope(_unpack(data, max_bytes))
    kind = body[0] if isinstance(body, list) and len(body) > 1 else None
    if in_scope is not None and isinstance(kind, int) and kind in SYNC_TYPES:  # (a map is unhashable)
        network = _str(body[1], "network")
        if not in_scope(network):
            raise OutOfScope(network, body[0])
    message = _message(body, None)
    if message.TYPE in DATAGRAM_TYPES and message.TYPE not in STREAM_PROBE_TYPES:
        raise RemoteProtocolError(f"{message.TYPE.name} is not a stream message", "unknown_type")
    return sender, message
