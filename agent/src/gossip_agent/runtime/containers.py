"""Containers on this host, for `gossip-agent ctl container`: a network namespace per container,
wired by a veth into its network's bridge, with an address and MAC from the network's subnet, and its
endpoint registered with the local agent, which gossips it to the network's members (whose data
planes then route to it).

Names and addresses derive from the network's VXLAN id and the container's index in this host's
block of the subnet, so nothing is stored here: the kernel's namespaces and the agent's table are
the whole state. The kernel work is iproute2's `ip -batch`: one process makes every namespace of a
call, one more every veth, and one per container configures its inside (a few in parallel).
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .client import ApiFailure, ApiUnavailable
from .dataplane import OVERLAY_TABLE as TABLE
from .dataplane import bridge_name

NETNS_DIR = "/run/netns"  # where `ip netns add` names namespaces
LOCK_FILE = "/run/gossip-agent-containers.lock"  # not NETNS_DIR: `ip netns add` flocks that itself
IFNAMSIZ = 15  # longest interface name the kernel accepts
# Concurrent `ip -n CONTAINER -batch -` processes. Creating 200 containers on 2 busy cores: one at a
# time ~170/s, 2 at once ~290/s, 4 ~320/s, 8 ~230/s (each process waits on the kernel about half
# its time; beyond that they only queue for the cores).
CONFIGURE_WORKERS = 2 * (os.cpu_count() or 1)
IP_TIMEOUT = 120.0  # seconds for one `ip -batch`; thousands of lines take a few
PROGRESS_EVERY = 2.0  # seconds: a create that takes longer says how far it got, on stderr

# (method, path, body=None) -> the decoded answer: runtime.client.call bound to the agent's socket.
ApiCall = Callable[..., Any]


class ContainerError(Exception):
    """The user's mistake (unknown network, no room, not root, ...), found before anything changed."""


class ContainerFailure(Exception):
    """The kernel or the agent failed midway; what the call had made is removed again."""


class KernelError(Exception):
    """An `ip` command failed; the message names the command and the kernel's reason."""


def netns_name(vxlan_id: int, index: int) -> str:
    return f"gc-{vxlan_id}-{index}"


def veth_name(vxlan_id: int, index: int) -> str:
    """The host side of container `index`'s veth; hex keeps it within IFNAMSIZ."""
    return f"gv{vxlan_id:x}-{index:x}"


def mac_of(address: ipaddress.IPv4Address) -> str:
    """02:42 and the four bytes of the address, as Docker does: unique wherever the address is."""
    return "02:42:" + ":".join(f"{byte:02x}" for byte in address.packed)


def endpoint_value(container: str, mac: str, vtep: str) -> str:
    return json.dumps({"container": container, "mac": mac, "vtep": vtep}, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Container:
    name: str  # its network namespace
    index: int  # in this host's block
    address: ipaddress.IPv4Address
    mac: str
    veth: str  # host side, on the bridge; inside the container it is eth0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ip": str(self.address), "mac": self.mac}


@dataclass(frozen=True, slots=True)
class Network:
    """A network as the agent describes it, and this host's block of its subnet.

    The subnet is cut into blocks of `per_host` addresses and this host owns block `host_index`,
    so hosts allocate without asking each other. Container i (1 <= i < per_host) gets the block's
    i-th address; index 0 is never used, so neither is the subnet's network address, and the block
    ends before the subnet's broadcast address.
    """

    name: str
    vxlan_id: int
    subnet: ipaddress.IPv4Network
    host_index: int
    per_host: int
    vtep: str  # this host's underlay address, where peers send the container's traffic
    node: str  # this agent's name: the owner of the endpoints it registers
    dataplane: str  # "on" or "off: <reason>"

    def __post_init__(self) -> None:
        if self.per_host < 2:
            raise ContainerError(f"containers_per_host is {self.per_host}: it must be at least 2")
        if self.host_index < 0 or not self.indices:
            # Block h has an address when its index 1 comes before the broadcast address.
            hosts = (self.subnet.num_addresses - 3) // self.per_host + 1
            holds = f"host indices 0-{hosts - 1}" if hosts > 0 else "no container address"
            raise ContainerError(
                f"host_index {self.host_index} is outside subnet {self.subnet} of network {self.name!r}: "
                f"with containers_per_host {self.per_host} it holds {holds}"
            )
        longest = veth_name(self.vxlan_id, self.indices[-1])
        if len(longest) > IFNAMSIZ:
            raise ContainerError(f"containers_per_host {self.per_host} is too big: veth name {longest} is too long")

    @property
    def bridge(self) -> str:
        return bridge_name(self.vxlan_id)

    @property
    def indices(self) -> range:
        base = self.host_index * self.per_host
        before_broadcast = self.subnet.num_addresses - 1 - base
        return range(1, max(1, min(self.per_host, before_broadcast)))

    def container(self, index: int) -> Container:
        address = self.subnet.network_address + self.host_index * self.per_host + index
        return Container(
            netns_name(self.vxlan_id, index), index, address, mac_of(address), veth_name(self.vxlan_id, index)
        )

    def index_of(self, name: str) -> int | None:
        """The index of container `name` of this network, or None when it is no such name."""
        match = re.fullmatch(rf"gc-{self.vxlan_id}-([1-9][0-9]*)", name)
        return int(match.group(1)) if match else None

    def block(self) -> str:
        first, last = self.container(self.indices[0]), self.container(self.indices[-1])
        return f"{first.address}-{last.address} (host_index {self.host_index}, containers_per_host {self.per_host})"


def network_from(health: dict[str, Any], info: dict[str, Any]) -> Network:
    """A Network from the agent's GET /health and its entry in GET /networks; ContainerError for
    what the configuration lacks."""
    name = info["network"]
    if info.get("vxlan_id") is None:
        raise ContainerError(f"network {name!r} has no vxlan_id: set networks[].vxlan_id in the agent config")
    if info.get("subnet") is None:
        raise ContainerError(f"network {name!r} has no subnet: set networks[].subnet in the agent config")
    subnet = ipaddress.ip_network(info["subnet"])
    if not isinstance(subnet, ipaddress.IPv4Network):
        raise ContainerError(f"network {name!r}: subnet {subnet} is not IPv4")
    if health.get("host_index") is None:
        raise ContainerError("host_index is not set in the agent config")
    return Network(
        name=name,
        vxlan_id=info["vxlan_id"],
        subnet=subnet,
        host_index=health["host_index"],
        per_host=health["containers_per_host"],
        vtep=health["advertise_addr"],
        node=health["node"],
        dataplane=info["dataplane"],
    )


def _attached(call: ApiCall, network: str | None) -> dict[str, dict[str, Any]]:
    """The agent's networks by name; ContainerError when `network` is given and not among them."""
    attached = {n["network"]: n for n in call("GET", "/networks")}
    if network is not None and network not in attached:
        names = ", ".join(sorted(attached)) or "none"
        raise ContainerError(f"network {network!r} is not attached on this host (attached: {names})")
    return attached


def describe(call: ApiCall, network: str) -> Network:
    health = call("GET", "/health")
    return network_from(health, _attached(call, network)[network])


def preflight() -> None:
    if os.geteuid() != 0:
        raise ContainerError("containers need root: they are network namespaces and veths")
    if shutil.which("ip") is None:
        raise ContainerError("iproute2's ip command is not installed")


# === the kernel ==================================================================================


def ip_batch(lines: Sequence[str], netns: str | None = None, force: bool = False) -> None:
    """Run `lines` in one `ip -batch -`, in network namespace `netns` (None: ours). It stops at the
    first failure unless `force`; KernelError names the failed command and the kernel's reason."""
    command = ["ip", *(["-force"] if force else []), *(["-n", netns] if netns else []), "-batch", "-"]
    where = f" in {netns}" if netns else ""
    try:
        result = subprocess.run(
            command, input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=IP_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        raise KernelError(f"ip -batch{where} took more than {IP_TIMEOUT:.0f} s ({len(lines)} commands)") from None
    if result.returncode == 0:
        return
    errors = result.stderr.strip().splitlines()
    failed = re.search(r"Command failed -:(\d+)", result.stderr)
    if failed is None or not 1 <= int(failed.group(1)) <= len(lines):
        raise KernelError(f"ip -batch{where} failed: {' '.join(errors[:2]) or f'exit {result.returncode}'}")
    reason = errors[0] if errors and not errors[0].startswith("Command failed") else "failed"
    raise KernelError(f"ip{where} {lines[int(failed.group(1)) - 1]!r}: {reason}")


def link_names(netns: str | None = None, master: str | None = None) -> set[str]:
    """The links of namespace `netns` (None: ours), or only the ports of bridge `master`."""
    command = ["ip", *(["-n", netns] if netns else []), "-o", "link", "show", *(["master", master] if master else [])]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=IP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise KernelError(f"{' '.join(command)} took more than {IP_TIMEOUT:.0f} s") from None
    if result.returncode and master and "does not exist" in result.stderr:
        return set()  # no such bridge: nothing is plugged into it
    if result.returncode:
        raise KernelError(f"{' '.join(command)}: {result.stderr.strip()}")
    # "7: gvfffc29-1@if2: <BROADCAST,...": the name is the second field, without its peer.
    return {line.split(": ", 2)[1].split("@")[0] for line in result.stdout.splitlines() if ": " in line}


def namespaces() -> set[str]:
    try:
        return set(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return set()


@contextmanager
def host_lock() -> Iterator[None]:
    """Two calls at once on one host would pick the same free indices: they take turns."""
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_namespaces(names: Sequence[str]) -> None:
    """Deleting a namespace deletes its eth0 and with it the veth's host side. The kernel finishes
    that asynchronously (a host-side veth lingers for a moment), which is why a create counts an
    index as free only when its veth is gone too."""
    if names:
        ip_batch([f"netns del {name}" for name in names], force=True)


def remove_containers(net: Network, containers: Sequence[Container], host_netns: str | None = None) -> None:
    """Unplug each container from the network's bridge, then delete its namespace; either may be
    gone already. A namespace deleted while still plugged in answers for that lingering moment: on
    the lab, a container pinged right after its delete returned still replied. Deleting a veth's
    host side deletes both ends before `ip` returns. Only the bridge's ports are unplugged, never
    a link of the same name that is not ours, and a port whose namespace is gone is unplugged too
    (something may still hold that namespace, and it would answer). Both steps are tried; what
    failed is raised after."""
    failures = []
    try:
        plugged = {c.veth for c in containers} & link_names(host_netns, master=net.bridge)
        if plugged:
            try:
                ip_batch([f"link del {veth}" for veth in sorted(plugged)], host_netns, force=True)
            except KernelError:  # one went meanwhile (its namespace deleted elsewhere): only those left count
                if plugged & link_names(host_netns, master=net.bridge):
                    raise
    except KernelError as exc:
        failures.append(f"unplugging failed: {exc}")
    existing = namespaces()
    try:
        remove_namespaces([c.name for c in containers if c.name in existing])
    except KernelError as exc:
        failures.append(str(exc))
    if failures:
        raise KernelError("; ".join(failures))


def _make(net: Network, made: Sequence[Container], host_netns: str | None, progress: Callable[[str], None]) -> None:
    ip_batch([f"netns add {c.name}" for c in made])
    # The host's part in the host's namespace; container namespaces are found by name from there.
    host_side = []
    for c in made:
        host_side.append(f"link add {c.veth} type veth peer name eth0 address {c.mac} netns {c.name}")
        host_side.append(f"link set {c.veth} master {net.bridge} up")
    ip_batch(host_side, host_netns)

    def inside(c: Container) -> list[str]:
        return [f"addr add {c.address}/{net.subnet.prefixlen} dev eth0", "link set eth0 up", "link set lo up"]

    started = reported = time.monotonic()
    with ThreadPoolExecutor(CONFIGURE_WORKERS) as pool:
        futures = [pool.submit(ip_batch, inside(c), c.name) for c in made]
        try:
            for done, future in enumerate(futures, 1):
                future.result()
                if (now := time.monotonic()) - reported >= PROGRESS_EVERY:
                    progress(f"{done}/{len(made)} containers configured in {now - started:.0f} s")
                    reported = now
        finally:
            for future in futures:
                future.cancel()


# === the calls ===================================================================================


def create(
    call: ApiCall,
    network: str,
    count: int,
    host_netns: str | None = None,
    progress: Callable[[str], None] = lambda text: None,
) -> dict[str, Any]:
    """Make `count` containers of `network` at the lowest free indices and register their
    endpoints in one API call; all or nothing. `host_netns` is the namespace that stands for this
    host (None: the one we run in)."""
    if count < 1:
        raise ContainerError(f"cannot create {count} containers")
    preflight()
    net = describe(call, network)
    if net.dataplane != "on":
        raise ContainerError(f"the data plane of network {network!r} is {net.dataplane}")
    check_block_is_ours(call, net)
    started = time.monotonic()
    with host_lock():
        links = link_names(host_netns)
        if net.bridge not in links:
            raise ContainerError(
                f"bridge {net.bridge} of network {network!r} is missing on this host: the agent makes it "
                f"when it attaches the network with the data plane on (the agent says: {net.dataplane})"
            )
        taken = namespaces()
        free = [c for c in map(net.container, net.indices) if c.name not in taken and c.veth not in links]
        if len(free) < count:
            raise ContainerError(
                f"no room for {count} more containers of {network!r} on this host: "
                f"{len(free)} of {len(net.indices)} addresses are free in block {net.block()}"
            )
        made = free[:count]
        try:
            _make(net, made, host_netns, progress)
            _register(call, net, made)
        except BaseException as exc:
            left = _undo(call, net, made, host_netns)
            if isinstance(exc, KernelError | ApiFailure | ApiUnavailable):
                undone = f"undoing failed: {left}" if left else f"removed the {count} containers this call made"
                raise ContainerFailure(f"{exc} ({undone})") from None
            raise
    seconds = time.monotonic() - started
    return {
        "network": network,
        "created": [c.to_dict() for c in made],
        "seconds": round(seconds, 3),
        "rate": round(count / seconds, 1),
    }


def _register(call: ApiCall, net: Network, made: Sequence[Container]) -> None:
    # One call: a block's entries (~150 bytes each, and a bridge holds at most 1,024 ports) stay far
    # below the API's 64 MiB body limit.
    entries = [{"table": TABLE, "key": str(c.address), "value": endpoint_value(c.name, c.mac, net.vtep)} for c in made]
    call("POST", f"/networks/{net.name}/entries", {"entries": entries})


def _undo(call: ApiCall, net: Network, made: Sequence[Container], host_netns: str | None) -> str:
    """Withdraw whatever endpoints of `made` the agent holds (a call that timed out may have written
    them), then remove their namespaces; what could not be undone ("" when everything was)."""
    left = []
    try:
        registered = own_endpoints(call, net)
        keys = [registered[c.name]["ip"] for c in made if c.name in registered]
        if keys:
            call("DELETE", f"/networks/{net.name}/entries", {"entries": [{"table": TABLE, "key": k} for k in keys]})
    except (ApiFailure, ApiUnavailable) as exc:
        left.append(f"endpoints may still be registered: {exc}")
    try:
        remove_containers(net, made, host_netns)
    except KernelError as exc:
        left.append(f"namespaces may remain: {exc}")
    return "; ".join(left)


def check_block_is_ours(call: ApiCall, net: Network) -> None:
    """Refuse when another node holds an endpoint in this host's block: two hosts share the
    host_index (an inventory reordered, say), and registering would take over its containers'
    addresses silently (the newer write of a key wins everywhere)."""
    block = {str(net.container(i).address) for i in net.indices}
    for entry in call("GET", f"/networks/{net.name}/entries")["entries"]:
        if entry["table"] == TABLE and entry["owner"] != net.node and entry["key"] in block:
            raise ContainerError(
                f"address {entry['key']} of this host's block {net.block()} is an endpoint of {entry['owner']}: "
                f"two hosts have host_index {net.host_index}; give each host its own (gossip_agent_host_index)"
            )


def own_endpoints(call: ApiCall, net: Network) -> dict[str, dict[str, str]]:
    """This host's endpoints of `net` in the agent's table: container name -> {"ip", "mac"}."""
    found = {}
    for entry in call("GET", f"/networks/{net.name}/entries")["entries"]:
        if entry["table"] != TABLE or entry["owner"] != net.node:
            continue
        try:
            value = json.loads(entry["value"])
            name = value["container"]
        except (ValueError, TypeError, KeyError):
            continue  # not an endpoint this tool wrote
        if isinstance(name, str) and net.index_of(name) is not None:
            found[name] = {"ip": entry["key"], "mac": str(value.get("mac", ""))}
    return found


def _local(net: Network) -> dict[str, int]:
    """This host's container namespaces of `net`: name -> index."""
    return {name: index for name in namespaces() if (index := net.index_of(name)) is not None}


def delete(
    call: ApiCall,
    network: str,
    count: int | None = None,
    names: Sequence[str] = (),
    everything: bool = False,
    host_netns: str | None = None,
) -> dict[str, Any]:
    """Delete the `count` highest-numbered containers, or those `names`, or `everything` (also
    endpoints whose namespace is gone): their endpoints first, so peers stop routing to them, then
    the containers, unplugged before this returns. `host_netns` as for `create`."""
    if (count is not None) + bool(names) + everything != 1:
        raise ContainerError("say which containers to delete: --count N, --all or NAME...")
    if count is not None and count < 1:
        raise ContainerError(f"cannot delete {count} containers")
    preflight()
    net = describe(call, network)
    started = time.monotonic()
    with host_lock():
        local = _local(net)
        endpoints = own_endpoints(call, net)
        if everything:  # and ports whose namespace's name is gone while something still holds it
            ports = link_names(host_netns, master=net.bridge)
            plugged = {c.name for c in map(net.container, net.indices) if c.veth in ports}
            doomed = set(local) | set(endpoints) | plugged
        elif count is not None:
            if count > len(local):
                raise ContainerError(f"cannot delete {count} containers of {network!r}: this host has {len(local)}")
            doomed = set(sorted(local, key=local.__getitem__)[len(local) - count :])
        else:
            for name in names:
                if net.index_of(name) is None:
                    raise ContainerError(f"{name} is not a container of network {network!r} (gc-{net.vxlan_id}-N)")
                if name not in local and name not in endpoints:
                    raise ContainerError(f"no container {name} on this host")
            doomed = set(names)
        keys = [endpoints[name]["ip"] for name in doomed if name in endpoints]
        if keys:
            call("DELETE", f"/networks/{network}/entries", {"entries": [{"table": TABLE, "key": k} for k in keys]})
        indices = (net.index_of(name) for name in sorted(doomed))
        try:
            remove_containers(net, [net.container(i) for i in indices if i is not None], host_netns)
        except KernelError as exc:
            raise ContainerFailure(f"endpoints withdrawn, but removing the containers failed: {exc}") from None
    seconds = time.monotonic() - started
    order = sorted(doomed, key=lambda name: net.index_of(name) or 0)
    return {"network": network, "deleted": order, "endpoints": len(keys), "seconds": round(seconds, 3)}


def list_containers(call: ApiCall, network: str | None = None) -> list[dict[str, Any]]:
    """This host's containers, in one network or in every attached network with a VXLAN id and a
    subnet: name, network, ip, mac, whether its endpoint is registered, whether its namespace exists."""
    health = call("GET", "/health")
    attached = _attached(call, network)
    wanted = [network] if network is not None else sorted(attached)
    rows = []
    for name in wanted:
        info = attached[name]
        if network is None and (info.get("vxlan_id") is None or info.get("subnet") is None):
            continue  # a network without a data plane has no containers
        net = network_from(health, info)
        endpoints = own_endpoints(call, net)
        local = _local(net)
        for container_name in sorted(set(local) | set(endpoints), key=lambda n: net.index_of(n) or 0):
            if container_name in local:
                row = net.container(local[container_name]).to_dict()
            else:  # an endpoint whose namespace is gone: what the agent holds is all there is
                row = {"name": container_name, **endpoints[container_name]}
            row.update(network=name, registered=container_name in endpoints, namespace=container_name in local)
            rows.append(row)
    return rows
