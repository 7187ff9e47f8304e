"""`ctl container`: address blocks, names and MACs; namespaces and veths made and removed in a
throwaway namespace that stands in for a host (with a stub of the agent's API); the clear errors of
the command line; and the whole path through a real agent.

Container namespaces are named globally (/run/netns), so these tests use VXLAN ids 16777101-16777199,
which no lab uses, refuse to start when a namespace of theirs already exists, and remove exactly what
they made, also on failure.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gossip_agent.cli import main
from gossip_agent.runtime import containers as ct
from gossip_agent.runtime.client import ApiFailure

from .agents import AgentProcess, Cluster, wait_for

VTEP = "198.18.250.1"


def network(subnet: str = "198.19.1.0/24", host_index: int = 0, per_host: int = 64, vxlan_id: int = 4097) -> ct.Network:
    return ct.Network(
        name="net", vxlan_id=vxlan_id, subnet=ipaddress.IPv4Network(subnet), host_index=host_index,
        per_host=per_host, vtep=VTEP, node="h1", dataplane="on",
    )  # fmt: skip


def addresses(net: ct.Network) -> list[str]:
    return [str(net.container(i).address) for i in net.indices]


# === pure: blocks, names, MACs ===================================================================


def test_a_24_with_64_per_host_holds_four_hosts():
    blocks = [addresses(network(host_index=h)) for h in range(4)]
    assert (blocks[0][0], blocks[0][-1], len(blocks[0])) == ("198.19.1.1", "198.19.1.63", 63)
    assert (blocks[1][0], blocks[1][-1], len(blocks[1])) == ("198.19.1.65", "198.19.1.127", 63)
    assert (blocks[3][0], blocks[3][-1], len(blocks[3])) == ("198.19.1.193", "198.19.1.254", 62)  # .255 broadcasts
    everything = [a for block in blocks for a in block]
    assert len(set(everything)) == len(everything) == 63 * 3 + 62
    assert not {"198.19.1.0", "198.19.1.64", "198.19.1.128", "198.19.1.192", "198.19.1.255"} & set(everything)
    with pytest.raises(ct.ContainerError, match=r"host_index 4 is outside subnet 198.19.1.0/24 .* host indices 0-3"):
        network(host_index=4)


@pytest.mark.parametrize(
    ("subnet", "per_host", "hosts"),
    [("198.19.1.0/24", 100, 3), ("198.19.1.0/24", 127, 2), ("198.19.1.0/30", 4, 1), ("198.19.0.0/16", 64, 1024)],
)
def test_blocks_never_hold_the_network_or_broadcast_address(subnet, per_host, hosts):
    seen: set[str] = set()
    for h in range(hosts):
        block = addresses(network(subnet, h, per_host))
        assert block, f"host {h} has no address"
        assert not seen & set(block)
        seen |= set(block)
    net = ipaddress.IPv4Network(subnet)
    assert {str(net.network_address), str(net.broadcast_address)}.isdisjoint(seen)
    assert all(ipaddress.IPv4Address(a) in net for a in seen)
    with pytest.raises(ct.ContainerError, match=f"host_index {hosts} is outside"):
        network(subnet, hosts, per_host)


def test_a_subnet_too_small_for_any_container_says_so():
    with pytest.raises(ct.ContainerError, match="holds no container address"):
        network("198.19.1.0/31", 0, 64)
    with pytest.raises(ct.ContainerError, match="at least 2"):
        network(per_host=1)


def test_names_fit_the_kernel_and_macs_follow_addresses():
    biggest = network("198.0.0.0/8", 0, 2**16, vxlan_id=2**24 - 1)
    last = biggest.container(biggest.indices[-1])
    assert (last.name, last.veth) == ("gc-16777215-65535", "gvffffff-ffff")
    assert all(len(ct.veth_name(2**24 - 1, i)) <= ct.IFNAMSIZ for i in (1, 0xFFFFFF))
    with pytest.raises(ct.ContainerError, match="too long"):
        network("0.0.0.0/4", 0, 2**25, vxlan_id=2**24 - 1)
    five = network("198.19.1.0/24").container(5)
    assert (five.name, five.veth, str(five.address), five.mac) == (
        "gc-4097-5", "gv1001-5", "198.19.1.5", "02:42:c6:13:01:05"
    )  # fmt: skip
    assert ct.endpoint_value("gc-4097-5", five.mac, VTEP) == (
        '{"container":"gc-4097-5","mac":"02:42:c6:13:01:05","vtep":"198.18.250.1"}'
    )
    assert network().index_of("gc-4097-12") == 12
    assert network().index_of("gc-40970-12") is None
    assert network().index_of("gc-4097-0") is None


@pytest.mark.parametrize(
    ("health", "info", "message"),
    [
        ({}, {"vxlan_id": None, "subnet": "198.19.1.0/24"}, "network 'net' has no vxlan_id"),
        ({}, {"vxlan_id": 4097, "subnet": None}, "network 'net' has no subnet"),
        ({"host_index": None}, {"vxlan_id": 4097, "subnet": "198.19.1.0/24"}, "host_index is not set in the agent"),
    ],
)
def test_what_the_configuration_lacks_is_named(health, info, message):
    with pytest.raises(ct.ContainerError, match=message):
        ct.network_from(health, {"network": "net", **info})


# === the kernel, with a stub of the agent ========================================================


class StubAgent:
    """The agent's API as containers.py uses it: /health, /networks and one network's overlay table."""

    def __init__(self, vxlan_id: int, subnet: str, host_index: int = 0, per_host: int = 64, dataplane: str = "on"):
        self.health = {"node": "h1", "advertise_addr": VTEP, "host_index": host_index, "containers_per_host": per_host}
        self.network = {"network": "ctnet", "members": ["h1"], "vxlan_id": vxlan_id, "subnet": subnet,
                        "dataplane": dataplane}  # fmt: skip
        self.table: dict[str, str] = {}
        self.foreign: dict[str, str] = {}  # address -> another node holding it as an endpoint
        self.refuse_writes = False
        self.posts = 0

    def __call__(self, method: str, path: str, body: Any = None) -> Any:
        if (method, path) == ("GET", "/health"):
            return self.health
        if (method, path) == ("GET", "/networks"):
            return [self.network]
        if path != "/networks/ctnet/entries":
            raise ApiFailure(404, f"network {path} not attached")
        if method == "GET":
            ours = [{"table": "overlay", "key": k, "value": v, "owner": "h1"} for k, v in self.table.items()]
            theirs = [{"table": "overlay", "key": k, "value": "{}", "owner": o} for k, o in self.foreign.items()]
            return {"entries": ours + theirs}
        if method == "POST":
            self.posts += 1
            if self.refuse_writes:
                raise ApiFailure(409, "refused by the test")
            self.table.update((e["key"], e["value"]) for e in body["entries"])
            return {"written": len(body["entries"])}
        missing = [e["key"] for e in body["entries"] if e["key"] not in self.table]
        if missing:
            raise ApiFailure(409, f"no entry overlay/{missing[0]}")
        for e in body["entries"]:
            del self.table[e["key"]]
        return {"deleted": len(body["entries"])}


@pytest.fixture
def root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs as root: container tests must not be skipped there")
        pytest.skip("needs root: network namespaces and veths")


def ours(vxlan_id: int) -> list[str]:
    return sorted(n for n in ct.namespaces() if n.startswith(f"gc-{vxlan_id}-"))


@pytest.fixture
def make_host(root) -> Iterator[Any]:
    """make_host(vxlan_id, bridge_kind="bridge") -> a namespace standing in for a host, with a link
    gbr-ID of that kind (`ip link add ... type KIND`), or none."""
    made: list[tuple[str, int]] = []

    def make(vxlan_id: int, bridge_kind: str | None = "bridge") -> str:
        if ours(vxlan_id):
            pytest.fail(f"namespaces {ours(vxlan_id)[:3]} exist already (another run?): remove them first")
        name = f"gltest-ct-{os.getpid()}-{len(made)}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append((name, vxlan_id))
        lines = ["link set lo up"]
        if bridge_kind:
            lines += [f"link add gbr-{vxlan_id} type {bridge_kind}", f"link set gbr-{vxlan_id} up"]
        ct.ip_batch(lines, name)
        return name

    yield make
    for name, vxlan_id in made:
        ct.remove_namespaces(ours(vxlan_id))
        subprocess.run(["ip", "netns", "del", name], check=False)


def links(netns: str, *selector: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-n", netns, "-j", "addr", "show", *selector], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result: list[dict[str, Any]] = json.loads(out.stdout)
    return result


def udp_reaches(source: str, target: str, address: str) -> bool:
    """A datagram from namespace `source` arrives at `address` in namespace `target`."""
    listener = subprocess.Popen(
        ["ip", "netns", "exec", target, sys.executable, "-c",
         "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
         f"s.bind(('{address}', 9999)); s.settimeout(10); print('ready', flush=True)\nprint(s.recv(64).decode())"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready"
        subprocess.run(
            ["ip", "netns", "exec", source, sys.executable, "-c",
             f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'hello', ('{address}', 9999))"],
            check=True, timeout=10,
        )  # fmt: skip
        return listener.communicate(timeout=15)[0].strip() == "hello"
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()


def test_create_wires_containers_into_the_bridge_and_delete_removes_them(make_host):
    vxlan_id = 16777101
    host = make_host(vxlan_id)
    agent = StubAgent(vxlan_id, "198.19.250.0/24", host_index=1)
    result = ct.create(agent, "ctnet", 3, host_netns=host)
    names = [f"gc-{vxlan_id}-{i}" for i in (1, 2, 3)]
    assert [c["name"] for c in result["created"]] == names
    assert ours(vxlan_id) == names
    expected = {f"198.19.250.{64 + i}": ct.endpoint_value(f"gc-{vxlan_id}-{i}", f"02:42:c6:13:fa:{64 + i:02x}", VTEP)
                for i in (1, 2, 3)}  # fmt: skip
    assert agent.table == expected
    assert agent.posts == 1
    (eth0,) = links(names[0], "dev", "eth0")
    assert eth0["address"] == "02:42:c6:13:fa:41"
    assert "UP" in eth0["flags"]
    assert {(a["local"], a["prefixlen"]) for a in eth0["addr_info"] if a["family"] == "inet"} == {("198.19.250.65", 24)}
    assert "UP" in links(names[0], "dev", "lo")[0]["flags"]
    ports = links(host, "master", f"gbr-{vxlan_id}")
    assert sorted(p["ifname"] for p in ports) == [f"gv{vxlan_id:x}-{i}" for i in (1, 2, 3)]
    assert all("UP" in p["flags"] for p in ports)
    assert udp_reaches(names[0], names[1], "198.19.250.66")

    rows = ct.list_containers(agent, "ctnet")
    assert [(r["name"], r["ip"], r["registered"], r["namespace"]) for r in rows] == [
        (n, f"198.19.250.{64 + i}", True, True) for i, n in enumerate(names, 1)
    ]
    ct.delete(agent, "ctnet", names=[names[1]], host_netns=host)
    assert ours(vxlan_id) == [names[0], names[2]]
    assert f"gv{vxlan_id:x}-2" not in ct.link_names(host)  # unplugged before delete returns: it answers nothing
    assert "198.19.250.66" not in agent.table
    del agent.table["198.19.250.65"]  # its endpoint is gone already: the namespace still goes
    assert [r["registered"] for r in ct.list_containers(agent, "ctnet")] == [False, True]
    assert ct.delete(agent, "ctnet", names=[names[0]], host_netns=host)["endpoints"] == 0
    assert ours(vxlan_id) == [names[2]]
    assert not {f"gv{vxlan_id:x}-1", f"gv{vxlan_id:x}-2"} & ct.link_names(host)
    assert [c["name"] for c in ct.create(agent, "ctnet", 1, host_netns=host)["created"]] == [names[0]]
    agent.table["198.19.250.100"] = ct.endpoint_value(f"gc-{vxlan_id}-36", "02:42:c6:13:fa:64", VTEP)
    assert ct.list_containers(agent)[-1] == {"name": f"gc-{vxlan_id}-36", "ip": "198.19.250.100",
        "mac": "02:42:c6:13:fa:64", "network": "ctnet", "registered": True, "namespace": False}  # fmt: skip
    deleted = ct.delete(agent, "ctnet", everything=True, host_netns=host)
    assert deleted["deleted"] == [names[0], names[2], f"gc-{vxlan_id}-36"]
    assert (ours(vxlan_id), agent.table) == ([], {})


@pytest.mark.parametrize("seed", range(1, 7))
def test_generated_creates_and_deletes_keep_kernel_and_table_in_step_with_a_model(make_host, seed):
    """Random creates and deletes (by count, by name, everything), with namespaces lost, veths
    lost, namespaces unnamed while a process still holds them (plugged in, answering) and
    endpoints withdrawn behind the command's back. After every step: the namespaces, the bridge's
    ports and the registered endpoints are exactly the model's, and a create takes the lowest
    free indices (a deleted container's veth left plugged in would hold its index)."""
    rng = random.Random(seed)
    print(f"seed {seed}")
    vxlan_id = 16777110 + seed
    host = make_host(vxlan_id)
    agent = StubAgent(vxlan_id, "198.19.252.0/24", host_index=2, per_host=8)
    net = ct.describe(agent, "ctnet")
    live: dict[str, str] = {}  # container -> address, while its namespace has its name
    registered: dict[str, str] = {}  # container -> address, while its endpoint is registered
    unplugged: set[str] = set()  # live containers whose veth is gone
    held: dict[str, subprocess.Popen[bytes]] = {}  # unnamed namespaces a process holds: still plugged in

    def gone(*names: str) -> None:  # deleted: not a trace of them may remain
        for name in names:
            live.pop(name, None)
            registered.pop(name, None)
            unplugged.discard(name)
            if name in held:
                stop(held.pop(name))

    try:
        for step in range(14):
            free = [c for c in map(net.container, net.indices) if c.name not in live and c.name not in held]
            plugged = sorted(set(live) - unplugged)
            op = rng.choice(["create", "create", "count", "names", "everything", "lose-namespace", "lose-veth", "hold",
                             "withdraw"])  # fmt: skip
            print(f"step {step}: {op} (live {sorted(live)}, unplugged {sorted(unplugged)}, held {sorted(held)})")
            if op == "create" and free:
                count = rng.randint(1, len(free))
                made = ct.create(agent, "ctnet", count, host_netns=host)["created"]
                assert [c["name"] for c in made] == [c.name for c in free[:count]]
                live.update((c["name"], c["ip"]) for c in made)
                registered.update((c["name"], c["ip"]) for c in made)
            elif op == "count" and live:
                count = rng.randint(1, len(live))
                doomed = sorted(live, key=lambda name: net.index_of(name) or 0)[len(live) - count :]
                assert sorted(ct.delete(agent, "ctnet", count=count, host_netns=host)["deleted"]) == sorted(doomed)
                gone(*doomed)
            elif op == "names" and (live or registered):
                known = sorted(set(live) | set(registered))
                doomed = rng.sample(known, rng.randint(1, len(known)))
                ct.delete(agent, "ctnet", names=doomed, host_netns=host)
                gone(*doomed)
            elif op == "everything":
                ct.delete(agent, "ctnet", everything=True, host_netns=host)
                gone(*live, *registered, *held)
            elif op == "lose-namespace" and live:  # a crash took it, the endpoint stays registered
                name = rng.choice(sorted(live))
                if name not in unplugged:
                    ct.ip_batch([f"link del {net.container(net.index_of(name) or 0).veth}"], host)
                ct.remove_namespaces([name])
                live.pop(name)
                unplugged.discard(name)
            elif op == "lose-veth" and plugged:  # the namespace stays, unplugged
                name = rng.choice(plugged)
                ct.ip_batch(["link del eth0"], name)
                unplugged.add(name)
            elif op == "hold" and plugged:  # `ip netns del` while a process runs in it: it lives on
                name = rng.choice(plugged)
                holder = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "300"])
                held[name] = holder
                wait_for(functools.partial(runs_in, holder.pid, name), 10, f"a process to run in {name}")
                ct.remove_namespaces([name])
                live.pop(name)
            elif op == "withdraw" and registered:  # its endpoint went, the namespace stays
                name = rng.choice(sorted(registered))
                del agent.table[registered.pop(name)]
            assert set(ours(vxlan_id)) == set(live)
            ports = {p["ifname"] for p in links(host, "master", net.bridge)}
            assert ports == {net.container(net.index_of(n) or 0).veth for n in (set(live) - unplugged) | set(held)}
            assert set(agent.table) == set(registered.values())
    finally:
        for holder in held.values():
            stop(holder)


def runs_in(pid: int, netns: str) -> bool:
    return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"{ct.NETNS_DIR}/{netns}").st_ino


def stop(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait()


def test_a_failure_midway_removes_what_the_call_made(make_host):
    vxlan_id = 16777102
    agent = StubAgent(vxlan_id, "198.19.251.0/24")
    agent.refuse_writes = True
    host = make_host(vxlan_id)
    with pytest.raises(ct.ContainerFailure, match=r"refused by the test \(removed the 5 containers this call made\)"):
        ct.create(agent, "ctnet", 5, host_netns=host)
    assert ours(vxlan_id) == []
    assert not [link for link in ct.link_names(host) if link.startswith(f"gv{vxlan_id:x}-")]  # unplugged too
    agent.refuse_writes = False
    not_a_bridge = make_host(vxlan_id, bridge_kind="veth peer name gltest-ct-p")
    with pytest.raises(ct.ContainerFailure, match=f"'link set gv{vxlan_id:x}-1 master gbr-{vxlan_id} up'"):
        ct.create(agent, "ctnet", 5, host_netns=not_a_bridge)
    assert (ours(vxlan_id), agent.table) == ([], {})


def test_user_mistakes_are_clear_and_change_nothing(make_host):
    vxlan_id = 16777103
    host = make_host(vxlan_id)
    agent = StubAgent(vxlan_id, "198.19.252.0/24", per_host=4)
    with pytest.raises(ct.ContainerError, match="network 'other' is not attached on this host"):
        ct.create(agent, "other", 1, host_netns=host)
    with pytest.raises(ct.ContainerError, match=f"bridge gbr-{vxlan_id} of network 'ctnet' is missing on this host"):
        ct.create(agent, "ctnet", 1, host_netns=make_host(vxlan_id, bridge_kind=None))
    agent.network["dataplane"] = "off: no VXLAN support in this kernel"
    with pytest.raises(ct.ContainerError, match="data plane of network 'ctnet' is off: no VXLAN support"):
        ct.create(agent, "ctnet", 1, host_netns=host)
    agent.network["dataplane"] = "on"
    with pytest.raises(ct.ContainerError, match=r"no room for 4 more .* 3 of 3 addresses are free in block "
                       r"198.19.252.1-198.19.252.3 \(host_index 0, containers_per_host 4\)"):  # fmt: skip
        ct.create(agent, "ctnet", 4, host_netns=host)
    assert ours(vxlan_id) == []
    agent.foreign = {"198.19.252.2": "h9"}  # h9 was given this host's host_index too
    with pytest.raises(ct.ContainerError, match="198.19.252.2 of this host's block .* is an endpoint of h9: two hosts"):
        ct.create(agent, "ctnet", 1, host_netns=host)
    assert ours(vxlan_id) == []
    assert agent.posts == 0
    agent.foreign = {"198.19.252.9": "h9"}  # outside this host's block: its own business
    ct.create(agent, "ctnet", 3, host_netns=host)
    with pytest.raises(ct.ContainerError, match="0 of 3 addresses are free"):
        ct.create(agent, "ctnet", 1, host_netns=host)
    with pytest.raises(ct.ContainerError, match="cannot delete 4 containers of 'ctnet': this host has 3"):
        ct.delete(agent, "ctnet", count=4)
    with pytest.raises(ct.ContainerError, match=f"gc-1-1 is not a container of network 'ctnet' .gc-{vxlan_id}-N."):
        ct.delete(agent, "ctnet", names=["gc-1-1"])
    with pytest.raises(ct.ContainerError, match=f"no container gc-{vxlan_id}-9 on this host"):
        ct.delete(agent, "ctnet", names=[f"gc-{vxlan_id}-9"])
    with pytest.raises(ct.ContainerError, match="say which containers"):
        ct.delete(agent, "ctnet", count=1, everything=True)
    assert len(ours(vxlan_id)) == 3
    assert ct.delete(agent, "ctnet", count=2, host_netns=host)["deleted"] == [f"gc-{vxlan_id}-2", f"gc-{vxlan_id}-3"]
    assert ours(vxlan_id) == [f"gc-{vxlan_id}-1"]


def test_two_hundred_containers_in_one_call(make_host):
    vxlan_id = 16777104
    host = make_host(vxlan_id)
    agent = StubAgent(vxlan_id, "198.19.0.0/16", per_host=256)
    result = ct.create(agent, "ctnet", 200, host_netns=host)
    assert len(ours(vxlan_id)) == len(agent.table) == 200
    assert agent.posts == 1
    started = time.monotonic()
    ct.delete(agent, "ctnet", everything=True, host_netns=host)
    print(f"\ncreated 200 containers in {result['seconds']:.2f} s ({result['rate']:.0f}/s); "
          f"deleted them in {time.monotonic() - started:.2f} s")  # fmt: skip
    assert (ours(vxlan_id), agent.table) == ([], {})


# === the command line and a real agent ===========================================================


def test_ctl_container_needs_root(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["ctl", "--socket", "/nonexistent.sock", "container", "create", "net"]) == 2
    assert (
        capsys.readouterr().err == "gossip-agent: error: containers need root: they are network namespaces and veths\n"
    )


@pytest.mark.daemon
def test_ctl_container_mistakes_are_one_line_and_exit_2(tmp_path, root):
    cluster = Cluster(tmp_path, 203)
    agent = cluster.add("solo", 1, networks=[{"id": "plain"}], seeds=[])
    try:
        agent.start()
        cases = [
            (["create", "plain"], "network 'plain' has no vxlan_id: set networks[].vxlan_id in the agent config"),
            (["create", "nope", "--count", "3"], "network 'nope' is not attached on this host (attached: plain)"),
            (["delete", "plain"], "say which containers to delete: --count N, --all or NAME..."),
            (["list", "nope"], "network 'nope' is not attached on this host (attached: plain)"),
        ]
        for args, message in cases:
            result = agent.ctl("container", *args)
            assert (result.returncode, result.stdout) == (2, ""), args
            assert result.stderr == f"gossip-agent: error: {message}\n", args
        listing = agent.ctl("container", "list")
        assert (listing.returncode, listing.stdout) == (0, "(none)\n")
    finally:
        cluster.stop()


@pytest.mark.daemon
def test_end_to_end_with_a_real_agent_in_a_host_namespace(tmp_path, make_host):
    vxlan_id = 16777105
    host = make_host(vxlan_id, bridge_kind=None)  # the agent makes the bridge
    underlay = ["link add ul0 type veth peer name ul1", f"addr add {VTEP}/24 dev ul0", "link set ul0 up"]
    ct.ip_batch([*underlay, "link set ul1 up"], host)
    agent = AgentProcess(tmp_path, "h1", VTEP, {
        "seeds": [], "host_index": 2,
        "networks": [{"id": "ctnet", "vxlan_id": vxlan_id, "subnet": "198.19.253.0/24"}],
    })  # fmt: skip
    in_host = ["nsenter", f"--net=/run/netns/{host}", sys.executable, "-m", "gossip_agent.cli"]

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        command = [*in_host, "ctl", "--socket", agent.socket, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    log = open(agent.dir / "agent.log", "ab")  # noqa: SIM115 - handed to the child
    agent.process = subprocess.Popen([*in_host, "run", "--config", str(agent.config)], stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    log.close()
    try:
        wait_for(agent.ready, 20, "the agent in the host namespace to answer")
        if "host_index" not in agent.api("GET", "/health") or "dataplane" not in agent.api("GET", "/networks")[0]:
            pytest.skip("waits for the data plane API")
        wait_for(lambda: agent.api("GET", "/networks")[0]["dataplane"] == "on", 20, "the data plane to be on")
        wait_for(lambda: f"gbr-{vxlan_id}" in ct.link_names(host), 20, "the agent to make the bridge")
        created = ctl("container", "create", "ctnet", "--count", "3")
        assert created.returncode == 0, created.stderr + agent.log()[-2000:]
        assert created.stdout.startswith("created 3 containers in ctnet in ")
        names = [f"gc-{vxlan_id}-{i}" for i in (1, 2, 3)]
        assert ours(vxlan_id) == names
        entries = agent.api("GET", "/networks/ctnet/entries")["entries"]
        assert {(e["table"], e["key"], e["value"]) for e in entries} == {
            ("overlay", f"198.19.253.{128 + i}", ct.endpoint_value(n, f"02:42:c6:13:fd:{128 + i:02x}", VTEP))
            for i, n in enumerate(names, 1)
        }
        listing = ctl("--json", "container", "list")
        assert listing.returncode == 0, listing.stderr
        assert [(r["name"], r["registered"], r["namespace"]) for r in json.loads(listing.stdout)] == [
            (n, True, True) for n in names
        ]
        deleted = ctl("container", "delete", "ctnet", "--all")
        assert deleted.returncode == 0, deleted.stderr
        assert ours(vxlan_id) == []
        assert agent.keys("ctnet") == set()
    finally:
        agent.stop()
        print(agent.log()[-2000:])
