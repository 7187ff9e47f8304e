"""The VXLAN data plane: the kernel's fdb and neighbour entries programmed from the overlay tables,
as libnetwork's overlay driver does.

Per attached network with a vxlan_id V: a bridge `gbr-V` (containers plug into it) and a vxlan
device `gvx-V` (learning off, proxy on: it answers the containers' ARP from its neighbour table).
For each visible entry of the network's `overlay` table written by another host: an fdb entry
MAC -> that host's vtep and a permanent neighbour entry IP -> MAC, both on gvx-V.

Two threads. The event loop keeps the desired state, O(1) per table change, and the kernel keys
whose desired value changed (`pending`). One worker thread owns the netlink sockets and runs one
job at a time (set up or remove a network's devices, apply a bounded batch, reconcile), reporting
back with call_soon_threadsafe. So the gossip loop never waits for the kernel, and the desired
state is read by one thread only.
"""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import ipaddress
import json
import logging
import math
import os
import queue
import re
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..core.wire import TableEvent

log = logging.getLogger("gossip_agent.dataplane")

OVERLAY_TABLE = "overlay"
VXLAN_PORT = 4789  # IANA's; what libnetwork and the lab's hosts use
BATCH_SIZE = 512  # kernel operations per job: their acks (~70 bytes each at worst) fit the socket buffer
LATENCY_WINDOW = 4096  # the most recent programming latencies kept for percentiles
TICK = 1.0  # seconds between checks for a due reconcile
ACK_TIMEOUT = 5.0  # seconds the worker waits for the kernel's acks of one batch
REPAIR_DELAY = 2.0  # seconds from a failed kernel operation to the reconcile that repairs it
CAP_NET_ADMIN = 12

Kind = Literal["fdb", "neigh"]
PendingKey = tuple[int, Kind, str]  # (vxlan id, kind, MAC or IP)
Op = tuple[int, Kind, str, str | None]  # (vxlan id, kind, MAC or IP, vtep or MAC; None: delete)
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
DEVICE = re.compile(r"^g(?:vx|br)-(\d{1,8})$")  # our bridges and vxlan devices

# Netlink (linux/netlink.h, linux/rtnetlink.h, linux/neighbour.h): a stable kernel ABI.
NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port
NDMSG = struct.Struct("=BBHiHBB")  # family, 2 x padding, ifindex, state, flags, type
RTATTR = struct.Struct("=HH")  # length, type
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_CREATE = 0x1, 0x4, 0x300, 0x100, 0x400
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
NDA_DST, NDA_LLADDR, NDA_MASTER = 1, 2, 9
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
NTF_SELF = 0x02
AF_BRIDGE = 7


def bridge_name(vxlan_id: int) -> str:
    return f"gbr-{vxlan_id}"


def vxlan_name(vxlan_id: int) -> str:
    return f"gvx-{vxlan_id}"


# === the desired state (pure) ======================================================================


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An overlay entry in the kernel's terms."""

    ip: str
    mac: str
    vtep: str
    owner: str
    lamport: int


def _unicast_ipv4(text: Any) -> ipaddress.IPv4Address | None:
    if not isinstance(text, str):
        return None
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        return None
    if str(address) != text or address.is_multicast or address.is_unspecified or address.is_loopback:
        return None
    if address.is_reserved:  # 240/4 and the broadcast address
        return None
    return address


def parse_endpoint(event: TableEvent, subnet: ipaddress.IPv4Network | ipaddress.IPv6Network | None) -> Endpoint | None:
    """The entry as kernel terms, or None when anything in it breaks the contract: key an IPv4
    address (in the network's subnet, when it has one), value JSON with a string container, a
    unicast MAC and a unicast IPv4 vtep. Whatever a peer sends, this returns; it never raises."""
    ip = _unicast_ipv4(event.key)
    if ip is None:
        return None
    # The subnet's network and broadcast addresses are no container's (containers.py never gives them).
    if subnet is not None and (ip not in subnet or ip in (subnet.network_address, subnet.broadcast_address)):
        return None
    try:
        data = json.loads(event.value)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(data, dict) or not isinstance(data.get("container"), str):
        return None
    mac, vtep = data.get("mac"), _unicast_ipv4(data.get("vtep"))
    if not isinstance(mac, str) or vtep is None:
        return None
    mac = mac.lower()
    # A multicast MAC (low bit of the first octet) or all zeros would be a flood rule, not an endpoint.
    if not MAC.match(mac) or int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
        return None
    return Endpoint(event.key, mac, str(vtep), event.owner, event.lamport)


def _claim_rank(endpoint: Endpoint) -> tuple[int, str, str]:
    """Of several entries claiming one MAC the newest wins (a container that moved is where its
    latest entry says until the old one goes); owner and IP break ties, so every host agrees."""
    return endpoint.lamport, endpoint.owner, endpoint.ip


def _assign(mapping: dict[str, str], key: str, value: str | None) -> bool:
    """Set or remove `key`; whether that changed anything."""
    if value is None:
        return mapping.pop(key, None) is not None
    if mapping.get(key) == value:
        return False
    mapping[key] = value
    return True


class DesiredNetwork:
    """The kernel entries one network should have, from its visible remote overlay entries.

    Computed per MAC and per IP from every live claim: when two entries claim one MAC, removing
    one leaves the other's fdb entry in place (or hands the MAC to it)."""

    def __init__(self) -> None:
        self.claims: dict[str, Endpoint] = {}  # IP (the entry's key) -> endpoint
        self._by_mac: dict[str, dict[str, Endpoint]] = {}  # MAC -> IP -> endpoint
        self.fdb: dict[str, str] = {}  # MAC -> vtep
        self.neigh: dict[str, str] = {}  # IP -> MAC

    def put(self, ip: str, endpoint: Endpoint | None) -> list[tuple[Kind, str]]:
        """Replace the claim on `ip` (None: it has none now); the kernel keys whose desired value
        changed."""
        macs = []
        old = self.claims.pop(ip, None)
        if old is not None:
            claimants = self._by_mac[old.mac]
            del claimants[ip]
            if not claimants:
                del self._by_mac[old.mac]
            macs.append(old.mac)
        if endpoint is not None:
            self.claims[ip] = endpoint
            self._by_mac.setdefault(endpoint.mac, {})[ip] = endpoint
            if old is None or old.mac != endpoint.mac:
                macs.append(endpoint.mac)
        changed: list[tuple[Kind, str]] = []
        for mac in macs:
            rivals = self._by_mac.get(mac)
            vtep = max(rivals.values(), key=_claim_rank).vtep if rivals else None
            if _assign(self.fdb, mac, vtep):
                changed.append(("fdb", mac))
        if _assign(self.neigh, ip, None if endpoint is None else endpoint.mac):
            changed.append(("neigh", ip))
        return changed


# === the worker (owns the netlink sockets; runs in its own thread) ===================================


@dataclass(frozen=True, slots=True)
class ReconcileSpec:
    """One network as a reconcile must leave it; `prune`: remove what is not desired (only once
    the network's table is synced: a fresh life knows few entries yet, and the kernel's are
    what the containers use meanwhile)."""

    vxlan_id: int
    fdb: dict[str, str]
    neigh: dict[str, str]
    prune: bool
    skip: frozenset[tuple[Kind, str]]  # pending keys: a later batch sets them


@dataclass(slots=True)
class ReconcileResult:
    setup: dict[int, str | None] = field(default_factory=dict)  # vxlan id -> why it is off (None: on)
    corrections: int = 0
    errors: int = 0


def _attribute(kind: int, data: bytes) -> bytes:
    return RTATTR.pack(RTATTR.size + len(data), kind) + data + bytes(-len(data) % 4)


def neighbour_message(seq: int, kind: Kind, ifindex: int, addr: str, value: str | None) -> bytes:
    """The netlink request that sets (`value` given) or deletes one fdb or neighbour entry."""
    if kind == "fdb":  # MAC -> vtep, on the vxlan device itself (NTF_SELF), not on a bridge above it
        body = NDMSG.pack(AF_BRIDGE, 0, 0, ifindex, NUD_PERMANENT | NUD_NOARP, NTF_SELF, 0)
        body += _attribute(NDA_LLADDR, bytes.fromhex(addr.replace(":", "")))
        if value is not None:
            body += _attribute(NDA_DST, socket.inet_aton(value))
    else:  # IP -> MAC
        body = NDMSG.pack(socket.AF_INET, 0, 0, ifindex, NUD_PERMANENT, 0, 0) + _attribute(
            NDA_DST, socket.inet_aton(addr)
        )
        if value is not None:
            body += _attribute(NDA_LLADDR, bytes.fromhex(value.replace(":", "")))
    kind_flags = (RTM_DELNEIGH, 0) if value is None else (RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE)
    return (
        NLMSGHDR.pack(NLMSGHDR.size + len(body), kind_flags[0], NLM_F_REQUEST | NLM_F_ACK | kind_flags[1], seq, 0)
        + body
    )


@dataclass(frozen=True, slots=True)
class KernelNeighbour:
    """One fdb or neighbour entry as a dump shows it."""

    ifindex: int
    state: int
    flags: int
    attributes: dict[int, bytes]


def parse_neighbours(data: bytes, seq: int) -> tuple[list[KernelNeighbour], bool]:
    """The entries in one read of a dump answering request `seq`, and whether the dump is done."""
    entries: list[KernelNeighbour] = []
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, kind, _, message_seq, _ = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size:
            raise OSError(errno.EPROTO, "malformed netlink message")
        if message_seq == seq:
            if kind == NLMSG_DONE:
                return entries, True
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", data, offset + NLMSGHDR.size)[0]
                raise OSError(code, os.strerror(code))
            if kind == RTM_NEWNEIGH:
                _, _, _, ifindex, state, flags, _ = NDMSG.unpack_from(data, offset + NLMSGHDR.size)
                attributes = {}
                position, end = offset + NLMSGHDR.size + NDMSG.size, offset + length
                while position + RTATTR.size <= end:
                    size, attribute = RTATTR.unpack_from(data, position)
                    if size < RTATTR.size:
                        break
                    attributes[attribute] = data[position + RTATTR.size : position + size]
                    position += (size + 3) & ~3
                entries.append(KernelNeighbour(ifindex, state, flags, attributes))
        offset += (length + 3) & ~3
    return entries, False


def _ip_text(data: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(data) == 4 else socket.AF_INET6, data)


class Worker:
    """The netlink side. Devices are made with pyroute2's IPRoute (vxlan attributes and all). The
    fdb and neighbour entries, many thousands, go as the small fixed messages above, many to a
    sendmsg on a raw netlink socket, acks matched by sequence number: pyroute2 cost ~0.5 ms of
    CPU per entry by IPRoute request, ~80 us to encode and ~90 us to parse one message (2.7 s
    to reconcile 10,000 entries)."""

    def __init__(self, local_addr: str) -> None:
        from pyroute2 import IPRoute

        self.local_addr = local_addr
        self.ipr = IPRoute(groups=0)  # no multicast groups: our own changes must not queue up as events
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        self.sock.settimeout(ACK_TIMEOUT)
        self.devices: dict[int, int] = {}  # vxlan id -> ifindex of gvx-V
        self._seq = 0

    def close(self) -> None:
        self.sock.close()
        self.ipr.close()

    def _index(self, name: str) -> int | None:
        found = self.ipr.link_lookup(ifname=name)
        return found[0] if found else None

    # --- devices ------------------------------------------------------------------------------------

    def setup(self, vxlan_id: int) -> str | None:
        """Make gbr-V and gvx-V as specified (recreating a gvx-V that differs); why not, or None."""
        from pyroute2.netlink.exceptions import NetlinkError

        self.devices.pop(vxlan_id, None)
        vxlan = vxlan_name(vxlan_id)
        try:
            bridge = self._index(bridge_name(vxlan_id))
            if bridge is None:
                self.ipr.link("add", ifname=bridge_name(vxlan_id), kind="bridge")
                bridge = self._index(bridge_name(vxlan_id))
            self.ipr.link("set", index=bridge, state="up")
            index = self._index(vxlan)
            if index is not None and not self._vxlan_as_specified(index, vxlan_id):
                log.warning("%s differs from its specification (id, local, port, learning, proxy): recreated", vxlan)
                self.ipr.link("del", index=index)
                index = None
            if index is None:
                self.ipr.link(
                    "add", ifname=vxlan, kind="vxlan", vxlan_id=vxlan_id, vxlan_local=self.local_addr,
                    vxlan_port=VXLAN_PORT, vxlan_learning=0, vxlan_proxy=1,
                )  # fmt: skip
                index = self._index(vxlan)
            self.ipr.link("set", index=index, master=bridge, state="up")
        except NetlinkError as exc:
            return f"cannot set up {vxlan}: {os.strerror(exc.code)}"
        if index is None:
            return f"cannot set up {vxlan}: it vanished while being made"
        self.devices[vxlan_id] = index
        return None

    def _vxlan_as_specified(self, index: int, vxlan_id: int) -> bool:
        links = self.ipr.get_links(index)
        data = links[0].get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA") if links else None
        if data is None:
            return False  # not a vxlan device at all
        return (
            data.get("IFLA_VXLAN_ID") == vxlan_id
            and data.get("IFLA_VXLAN_LOCAL") == self.local_addr
            and data.get("IFLA_VXLAN_PORT") == VXLAN_PORT
            and not data.get("IFLA_VXLAN_LEARNING")
            and bool(data.get("IFLA_VXLAN_PROXY"))
        )

    def remove(self, vxlan_id: int) -> None:
        """Delete gvx-V (its fdb and neighbour entries go with it). The bridge goes too unless
        containers are still plugged into it: they keep talking to each other on this host, and
        whoever unplugs the last one (or a re-attach, which reuses it) decides its fate."""
        from pyroute2.netlink.exceptions import NetlinkError

        self.devices.pop(vxlan_id, None)
        try:
            index = self._index(vxlan_name(vxlan_id))
            if index is not None:
                self.ipr.link("del", index=index)
            bridge = self._index(bridge_name(vxlan_id))
            if bridge is not None and not self.ipr.link_lookup(master=bridge):
                self.ipr.link("del", index=bridge)
        except NetlinkError as exc:
            log.warning("removing the devices of vxlan id %d: %s", vxlan_id, os.strerror(exc.code))

    # --- entries ------------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF
        return self._seq

    def apply(self, ops: list[Op]) -> list[int]:
        """Send the operations in one go; the errno of each (0: done)."""
        results = [0] * len(ops)
        by_seq: dict[int, int] = {}
        buffer = bytearray()
        for i, (vxlan_id, kind, addr, value) in enumerate(ops):
            index = self.devices.get(vxlan_id)
            if index is None:
                results[i] = errno.ENODEV
                continue
            seq = self._next_seq()
            buffer += neighbour_message(seq, kind, index, addr, value)
            by_seq[seq] = i
        if buffer:
            self._send(bytes(buffer), by_seq, results)
        for i, code in enumerate(results):
            if code == errno.ENODEV:
                self.devices.pop(ops[i][0], None)  # deleted under us: the next reconcile makes it again
        return results

    def _send(self, data: bytes, by_seq: dict[int, int], results: list[int]) -> None:
        try:
            self.sock.send(data)
            while by_seq:
                reply = self.sock.recv(1 << 16)
                offset = 0
                while offset + NLMSGHDR.size <= len(reply):
                    length, kind, _, seq, _ = NLMSGHDR.unpack_from(reply, offset)
                    if length < NLMSGHDR.size:
                        break
                    i = by_seq.pop(seq, None)
                    if kind == NLMSG_ERROR and i is not None:
                        results[i] = -struct.unpack_from("=i", reply, offset + NLMSGHDR.size)[0]
                    offset += (length + 3) & ~3
        except OSError as exc:  # a timeout too: whatever was not acked counts as failed
            for i in by_seq.values():
                results[i] = exc.errno or errno.ETIMEDOUT
            by_seq.clear()

    # --- reconcile ----------------------------------------------------------------------------------

    def dump(self, family: int) -> list[KernelNeighbour]:
        """Every fdb (AF_BRIDGE) or neighbour (AF_INET) entry of this namespace."""
        seq = self._next_seq()
        request = NDMSG.pack(family, 0, 0, 0, 0, 0, 0)
        self.sock.send(
            NLMSGHDR.pack(NLMSGHDR.size + len(request), RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + request
        )
        entries: list[KernelNeighbour] = []
        done = False
        while not done:
            more, done = parse_neighbours(self.sock.recv(1 << 16), seq)
            entries += more
        return entries

    def reconcile(self, specs: list[ReconcileSpec]) -> ReconcileResult:
        """Read each gvx device's fdb and neighbour entries and make them the desired ones."""
        result = ReconcileResult()
        for spec in specs:
            reason = self.setup(spec.vxlan_id)
            result.setup[spec.vxlan_id] = reason
            if reason is not None:
                continue
            try:
                ops = self._differences(spec, self.devices[spec.vxlan_id])
            except OSError as exc:
                log.warning("reading the entries of %s: %s", vxlan_name(spec.vxlan_id), exc)
                result.errors += 1
                continue
            for start in range(0, len(ops), BATCH_SIZE):
                codes = self.apply(ops[start : start + BATCH_SIZE])
                result.corrections += sum(1 for c in codes if c == 0)
                result.errors += sum(1 for c in codes if c != 0)
        return result

    def _differences(self, spec: ReconcileSpec, index: int) -> list[Op]:
        # Ours are the vxlan device's own (NTF_SELF) entries with a remote; the bridge's entries
        # for the port (NDA_MASTER: its own MAC, what it learned) and dynamic neighbours are the
        # kernel's, never "corrected".
        fdb: dict[str, set[str]] = {}
        for entry in self.dump(AF_BRIDGE):
            attrs = entry.attributes
            if entry.ifindex == index and entry.flags & NTF_SELF and NDA_DST in attrs and NDA_MASTER not in attrs:
                fdb.setdefault(attrs[NDA_LLADDR].hex(":"), set()).add(_ip_text(attrs[NDA_DST]))
        neigh = {
            _ip_text(entry.attributes[NDA_DST]): entry.attributes.get(NDA_LLADDR, b"").hex(":")
            for entry in self.dump(socket.AF_INET)
            if entry.ifindex == index and entry.state & NUD_PERMANENT and NDA_DST in entry.attributes
        }
        v = spec.vxlan_id
        ops: list[Op] = []
        for mac, vtep in spec.fdb.items():
            held = fdb.get(mac, set())
            if held != {vtep} and ("fdb", mac) not in spec.skip:
                if len(held) > 1:  # a replace changes only the first remote: start afresh
                    ops.append((v, "fdb", mac, None))
                ops.append((v, "fdb", mac, vtep))
        for ip, mac in spec.neigh.items():
            if neigh.get(ip) != mac and ("neigh", ip) not in spec.skip:
                ops.append((v, "neigh", ip, mac))
        if spec.prune:
            ops += [(v, "fdb", m, None) for m in fdb if m not in spec.fdb and ("fdb", m) not in spec.skip]
            ops += [(v, "neigh", ip, None) for ip in neigh if ip not in spec.neigh and ("neigh", ip) not in spec.skip]
        return ops


# === the loop's side ==============================================================================


def capability_problem() -> str | None:
    """Why this process cannot program the kernel, or None. Without importing pyroute2: it costs
    ~22 MB of RSS, which only an agent with a network to program should pay."""
    if importlib.util.find_spec("pyroute2") is None:
        return "pyroute2 is not installed"
    try:
        with open("/proc/self/status") as status:
            caps = next(int(line.split()[1], 16) for line in status if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return "cannot read this process's capabilities"
    if not caps & (1 << CAP_NET_ADMIN):
        return "no CAP_NET_ADMIN (not root)"
    return None


@dataclass(slots=True)
class _Network:
    """A network the data plane programs (or tries to: `state` says why not)."""

    name: str
    vxlan_id: int
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    state: str = "off: setting up"  # "on" or "off: <why>"
    desired: DesiredNetwork = field(default_factory=DesiredNetwork)
    settled: bool = False  # its table has synced once: a reconcile may remove what is not desired


class Dataplane:
    """Desired state on the loop, the kernel in a worker thread; see the module docstring."""

    def __init__(
        self,
        node_name: str,
        local_addr: str,
        reconcile_interval: float,
        settled: Callable[[str], bool],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.node_name = node_name
        self.local_addr = local_addr
        self.reconcile_interval = reconcile_interval
        self._settled = settled
        self.loop = loop
        problem = capability_problem()
        self.state = "on" if problem is None else f"off: {problem}"
        self.networks: dict[str, _Network] = {}  # by name: the networks it programs
        self._by_vxlan: dict[int, _Network] = {}
        self._not_programmed: dict[str, str] = {}  # attached networks it leaves alone -> "off: <why>"
        self._pending: dict[PendingKey, float] = {}  # -> loop time the change was learned
        self._control: deque[tuple[Callable[[Worker], Any], Callable[[Any], None]]] = deque()
        self._in_flight = 0  # operations of the batch the worker holds
        self._busy = False
        self._next_reconcile = 0.0
        self.counters = {"programmed": 0, "removed": 0, "corrections": 0, "errors": 0, "bad_values": 0}
        self._latencies_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._logged: set[str] = set()
        self._jobs: queue.SimpleQueue[tuple[Callable[[Worker], Any], Callable[[Any], None]] | None]
        self._jobs = queue.SimpleQueue()
        self._started = False
        self._thread: threading.Thread | None = None  # started with the first network to program
        self._worker_cpu = 0.0  # CPU-seconds of the worker thread, written by it
        self._timer: asyncio.TimerHandle | None = None

    def _log_once(self, message: str) -> None:
        if message not in self._logged:
            self._logged.add(message)
            log.warning("%s", message)

    # --- life cycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self.state != "on":
            self._log_once(f"data plane {self.state}; the agent runs as a control plane only")
            return
        self._started = True
        # Devices of networks no longer attached (detached just before the last life ended, with
        # the removal still queued; dropped from the config) would keep routing to endpoints
        # nobody updates: remove them. Listed by if_nameindex, which sees this network namespace.
        leftovers = {int(m.group(1)) for _, name in socket.if_nameindex() if (m := DEVICE.match(name))}
        for vxlan_id in sorted(leftovers - set(self._by_vxlan)):
            log.info("removing %s, left by a network no longer attached", vxlan_name(vxlan_id))
            self._control.append((lambda w, v=vxlan_id: w.remove(v), lambda _: None))
        if self.networks or leftovers - set(self._by_vxlan):
            self._start_worker()

    def _start_worker(self) -> None:
        self._thread = threading.Thread(target=self._work, name="dataplane", daemon=True)
        self._thread.start()
        self._next_reconcile = self.loop.time()  # at once: repair what changed while we were down
        self._timer = self.loop.call_later(TICK, self._tick)
        self._kick()

    def stop(self) -> None:
        """End the worker; the kernel's entries stay. Containers keep working while the agent
        restarts (like dockerd's live-restore), and the next life's reconcile repairs whatever
        changed meanwhile."""
        if self._timer is not None:
            self._timer.cancel()
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(ACK_TIMEOUT * 2)
            self._thread = None

    def _work(self) -> None:
        try:
            worker = Worker(self.local_addr)
        except Exception as exc:  # noqa: BLE001 - whatever it is, the agent stays a control plane
            self.loop.call_soon_threadsafe(self._worker_failed, f"cannot open netlink: {exc}")
            return
        try:
            while (job := self._jobs.get()) is not None:
                run, done = job
                started = time.thread_time()
                try:
                    result = run(worker)
                except Exception as exc:  # noqa: BLE001 - a bug must not end programming for good
                    log.exception("data plane job failed")
                    result = exc
                self._worker_cpu += time.thread_time() - started
                try:
                    self.loop.call_soon_threadsafe(done, result)
                except RuntimeError:
                    return  # the loop is closed: the agent is gone
        finally:
            worker.close()

    def _worker_failed(self, reason: str) -> None:
        self.state = f"off: {reason}"
        self._thread = None
        self._log_once(f"data plane {self.state}; the agent runs as a control plane only")
        for net in self.networks.values():
            net.state = self.state
        self._pending.clear()

    def _tick(self) -> None:
        now = self.loop.time()
        for net in self.networks.values():
            if not net.settled and self._settled(net.name):
                net.settled = True
                self._next_reconcile = now  # what the last life left may now be judged
        self._timer = self.loop.call_later(TICK, self._tick)
        self._kick()

    # --- networks -----------------------------------------------------------------------------------

    def attach(
        self, network: str, vxlan_id: int | None, subnet: str | None, entries: Iterable[TableEvent], now: float
    ) -> None:
        """Start programming a network, from the visible entries its table already holds."""
        if vxlan_id is None:
            self._not_programmed[network] = "off: no vxlan_id"
            return
        if self.state != "on":
            self._not_programmed[network] = self.state
            return
        if vxlan_id in self._by_vxlan:
            reason = f"off: vxlan_id {vxlan_id} is used by network {self._by_vxlan[vxlan_id].name}"
            self._not_programmed[network] = reason
            self._log_once(f"network {network}: data plane {reason}")
            return
        net = _Network(network, vxlan_id, None if subnet is None else ipaddress.ip_network(subnet))
        self.networks[network] = self._by_vxlan[vxlan_id] = net
        self._control.append((lambda w: w.setup(vxlan_id), lambda reason: self._set_up(net, reason)))
        for event in entries:
            self._put(net, event, now)
        if self._started and self._thread is None:
            self._start_worker()
        self._kick()

    def detach(self, network: str) -> None:
        self._not_programmed.pop(network, None)
        net = self.networks.pop(network, None)
        if net is None:
            return
        vxlan_id = net.vxlan_id
        del self._by_vxlan[vxlan_id]
        for key in [k for k in self._pending if k[0] == vxlan_id]:
            del self._pending[key]
        self._control.append((lambda w: w.remove(vxlan_id), lambda _: None))
        self._kick()

    def network_state(self, network: str) -> str:
        net = self.networks.get(network)
        return net.state if net is not None else self._not_programmed.get(network, "off: not attached")

    def _set_up(self, net: _Network, reason: str | Exception | None) -> None:
        if self._by_vxlan.get(net.vxlan_id) is not net:
            return  # detached meanwhile
        if reason is None:
            if net.state != "on":
                log.info("network %s: data plane on (%s)", net.name, vxlan_name(net.vxlan_id))
            net.state = "on"
            return
        net.state = f"off: {reason}"
        self._log_once(f"network {net.name}: data plane {net.state}")

    # --- changes ------------------------------------------------------------------------------------

    def on_change(self, network: str, table: str, key: str, after: TableEvent | None, at: float) -> None:
        """A table entry changed; `after` None: no longer visible (deleted or withdrawn)."""
        if table != OVERLAY_TABLE:
            return
        net = self.networks.get(network)
        if net is None:
            return
        if after is None or after.owner == self.node_name:
            self._forget(net, key, at)
        else:
            self._put(net, after, at)
        self._kick()

    def _put(self, net: _Network, event: TableEvent, at: float) -> None:
        if event.table != OVERLAY_TABLE or event.owner == self.node_name:
            return
        endpoint = parse_endpoint(event, net.subnet)
        if endpoint is None:
            self.counters["bad_values"] += 1
            self._forget(net, event.key, at)  # its owner's newest word is not an endpoint
            return
        for kind, addr in net.desired.put(event.key, endpoint):
            self._pending.setdefault((net.vxlan_id, kind, addr), at)

    def _forget(self, net: _Network, key: str, at: float) -> None:
        for kind, addr in net.desired.put(key, None):
            self._pending.setdefault((net.vxlan_id, kind, addr), at)

    # --- jobs ---------------------------------------------------------------------------------------

    def _kick(self) -> None:
        """Hand the worker its next job, if it is idle: device changes first, then a due
        reconcile, then a batch of pending entries."""
        if self._thread is None or self._busy:
            return
        run: Callable[[Worker], Any] | None
        if self._control:
            run, done = self._control.popleft()
        elif self.loop.time() >= self._next_reconcile:
            # Counted from its end: a reconcile longer than the interval must not starve the batches.
            self._next_reconcile = math.inf
            run, done = self._reconcile_job()
        elif self._pending:
            run, done = self._batch_job()
        else:
            return
        if run is None:
            return
        self._busy = True
        self._jobs.put((run, lambda result: self._finished(done, result)))

    def _finished(self, done: Callable[[Any], None], result: Any) -> None:
        self._busy = False
        self._in_flight = 0
        done(result)
        self._kick()

    def _batch_job(self) -> tuple[Callable[[Worker], Any] | None, Callable[[Any], None]]:
        ops: list[Op] = []
        learned: list[float] = []
        while self._pending and len(ops) < BATCH_SIZE:
            key, at = next(iter(self._pending.items()))
            del self._pending[key]
            vxlan_id, kind, addr = key
            net = self._by_vxlan.get(vxlan_id)
            if net is None or net.state != "on":
                continue  # a reconcile programs it whole once it is on
            desired = net.desired.fdb if kind == "fdb" else net.desired.neigh
            ops.append((vxlan_id, kind, addr, desired.get(addr)))
            learned.append(at)
        if not ops:
            return None, lambda _: None
        self._in_flight = len(ops)

        def applied(codes: Any) -> None:
            if isinstance(codes, Exception):
                self.counters["errors"] += len(ops)
                self._repair_soon()
                return
            done_at = self.loop.time()
            for (_, _, _, value), at, code in zip(ops, learned, codes, strict=True):
                if code == 0:
                    self.counters["programmed" if value is not None else "removed"] += 1
                elif value is not None or code != errno.ENOENT:  # removing what is gone is no error
                    self.counters["errors"] += 1
                    self._repair_soon()
                    continue
                self._latencies_ms.append(max(0.0, (done_at - at) * 1000))

        return (lambda w: w.apply(ops)), applied

    def _repair_soon(self) -> None:
        """A failed operation (a timeout, a full socket buffer, a device gone) is not retried by
        itself: the reconcile, which programs the whole desired state, comes in REPAIR_DELAY
        instead of up to reconcile_interval later, so a stale route does not live 30 s."""
        self._next_reconcile = min(self._next_reconcile, self.loop.time() + REPAIR_DELAY)

    def _reconcile_job(self) -> tuple[Callable[[Worker], Any], Callable[[Any], None]]:
        skip: dict[int, set[tuple[Kind, str]]] = {}
        for vxlan_id, kind, addr in self._pending:
            skip.setdefault(vxlan_id, set()).add((kind, addr))
        nets = dict(self._by_vxlan)
        specs = [
            ReconcileSpec(v, dict(n.desired.fdb), dict(n.desired.neigh), n.settled, frozenset(skip.get(v, ())))
            for v, n in nets.items()
        ]

        def reconciled(result: Any) -> None:
            self._next_reconcile = min(self._next_reconcile, self.loop.time() + self.reconcile_interval)
            if isinstance(result, Exception):
                self.counters["errors"] += 1
                return
            self.counters["corrections"] += result.corrections
            self.counters["errors"] += result.errors
            for vxlan_id, reason in result.setup.items():
                net = nets[vxlan_id]
                if self._by_vxlan.get(vxlan_id) is net:
                    self._set_up(net, reason)

        return (lambda w: w.reconcile(specs)), reconciled

    # --- reading ------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        window = sorted(self._latencies_ms)

        def ms(q: float) -> float | None:
            # Nearest rank, as sim.checker.percentile (not imported: the agent does not load the simulator).
            return (
                round(window[min(len(window) - 1, max(0, math.ceil(q / 100 * len(window)) - 1))], 1) if window else None
            )

        return {
            "state": self.state,
            **self.counters,
            "pending": len(self._pending) + self._in_flight,
            "latency_ms": {"p50": ms(50), "p99": ms(99), "max": ms(100)},
            "worker_cpu_seconds": round(self._worker_cpu, 3),
        }
