"""The VXLAN data plane: the desired state (pure), and real agents programming the kernels of two
namespace hosts whose containers then ping each other."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gossip_agent.core.wire import TableEvent
from gossip_agent.runtime.client import ApiFailure
from gossip_agent.runtime.config import ConfigError, NetworkConfig, parse
from gossip_agent.runtime.dataplane import DesiredNetwork, neighbour_message, parse_endpoint, parse_neighbours
from gossip_agent.runtime.store import Journal

from .agents import AgentProcess, wait_for

# === desired state =================================================================================


def overlay(key: str, mac: str, vtep: str, owner: str = "h2", lamport: int = 1) -> TableEvent:
    value = json.dumps({"container": "c", "mac": mac, "vtep": vtep}, separators=(",", ":"), sort_keys=True)
    return TableEvent("blue", "overlay", key, value.encode(), owner, lamport, 0, False)


def claim(desired: DesiredNetwork, event: TableEvent) -> list[tuple[str, str]]:
    endpoint = parse_endpoint(event, None)
    assert endpoint is not None, event
    return desired.put(event.key, endpoint)


MAC_A, MAC_B = "02:42:c6:13:2a:01", "02:42:c6:13:2a:02"


def test_desired_state_one_entry_in_and_out():
    desired = DesiredNetwork()
    changed = claim(desired, overlay("198.19.42.1", MAC_A, "198.18.0.2"))
    assert sorted(changed) == [("fdb", MAC_A), ("neigh", "198.19.42.1")]
    assert desired.fdb == {MAC_A: "198.18.0.2"}
    assert desired.neigh == {"198.19.42.1": MAC_A}
    assert claim(desired, overlay("198.19.42.1", MAC_A, "198.18.0.2", lamport=2)) == []  # same kernel state
    assert sorted(desired.put("198.19.42.1", None)) == [("fdb", MAC_A), ("neigh", "198.19.42.1")]
    assert desired.fdb == {}
    assert desired.neigh == {}
    assert desired.put("198.19.42.1", None) == []


def test_desired_state_two_claims_on_one_mac():
    desired = DesiredNetwork()
    claim(desired, overlay("198.19.42.1", MAC_A, "198.18.0.2", owner="h2", lamport=5))
    # A newer claim (the container moved to h3) takes the MAC over; its IP gets its own neighbour.
    assert sorted(claim(desired, overlay("198.19.42.7", MAC_A, "198.18.0.3", owner="h3", lamport=9))) == [
        ("fdb", MAC_A),
        ("neigh", "198.19.42.7"),
    ]
    assert desired.fdb == {MAC_A: "198.18.0.3"}
    # The older claimant goes: the fdb entry the newer one needs stays.
    assert desired.put("198.19.42.1", None) == [("neigh", "198.19.42.1")]
    assert desired.fdb == {MAC_A: "198.18.0.3"}
    assert desired.neigh == {"198.19.42.7": MAC_A}
    # The other order: the winner goes first, the MAC falls back to the claim that remains.
    claim(desired, overlay("198.19.42.1", MAC_A, "198.18.0.2", owner="h2", lamport=5))
    assert sorted(desired.put("198.19.42.7", None)) == [("fdb", MAC_A), ("neigh", "198.19.42.7")]
    assert desired.fdb == {MAC_A: "198.18.0.2"}
    # Equal Lamport times: the owner decides, the same way on every host.
    tie = DesiredNetwork()
    claim(tie, overlay("198.19.42.2", MAC_B, "198.18.0.3", owner="h3", lamport=4))
    claim(tie, overlay("198.19.42.3", MAC_B, "198.18.0.2", owner="h2", lamport=4))
    assert tie.fdb == {MAC_B: "198.18.0.3"}


def test_desired_state_an_ip_that_changes_mac():
    desired = DesiredNetwork()
    claim(desired, overlay("198.19.42.1", MAC_A, "198.18.0.2"))
    changed = claim(desired, overlay("198.19.42.1", MAC_B, "198.18.0.2", lamport=2))
    assert sorted(changed) == [("fdb", MAC_A), ("fdb", MAC_B), ("neigh", "198.19.42.1")]
    assert desired.fdb == {MAC_B: "198.18.0.2"}
    assert desired.neigh == {"198.19.42.1": MAC_B}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("198.19.42.1", b"not json"),
        ("198.19.42.1", b"\xff\xfe"),
        ("198.19.42.1", b"[" * 20_000),  # deep nesting: a RecursionError in json
        ("198.19.42.1", b'{"container": "c", "mac": "02:42:c6:13:2a:01"}'),
        ("198.19.42.1", b'{"container": 5, "mac": "02:42:c6:13:2a:01", "vtep": "198.18.0.2"}'),
        ("198.19.42.1", b'{"container": "c", "mac": "01:00:5e:00:00:01", "vtep": "198.18.0.2"}'),  # multicast
        ("198.19.42.1", b'{"container": "c", "mac": "00:00:00:00:00:00", "vtep": "198.18.0.2"}'),
        ("198.19.42.1", b'{"container": "c", "mac": "02:42:c6:13:2a", "vtep": "198.18.0.2"}'),
        ("198.19.42.1", b'{"container": "c", "mac": "02:42:c6:13:2a:01", "vtep": "224.0.0.1"}'),
        ("198.19.42.1", b'{"container": "c", "mac": "02:42:c6:13:2a:01", "vtep": "fe80::1"}'),
        ("198.19.42.1", b'{"container": "c", "mac": "02:42:c6:13:2a:01", "vtep": ["198.18.0.2"]}'),
        ("web-1", b'{"container": "c", "mac": "02:42:c6:13:2a:01", "vtep": "198.18.0.2"}'),
        ("198.19.042.1", b'{"container": "c", "mac": "02:42:c6:13:2a:01", "vtep": "198.18.0.2"}'),
        ("198.20.0.1", b'{"container": "c", "mac": "02:42:c6:13:2a:01", "vtep": "198.18.0.2"}'),  # off subnet
        ("198.19.0.0", b'{"container": "c", "mac": "02:42:c6:13:00:00", "vtep": "198.18.0.2"}'),  # network address
        ("198.19.255.255", b'{"container": "c", "mac": "02:42:c6:13:ff:ff", "vtep": "198.18.0.2"}'),  # broadcast
    ],
)
def test_bad_overlay_values_are_refused(key, value):
    event = TableEvent("blue", "overlay", key, value, "h2", 1, 0, False)
    assert parse_endpoint(event, ipaddress.ip_network("198.19.0.0/16")) is None


def test_neighbour_messages_read_back_as_the_kernel_would_dump_them():
    fdb = neighbour_message(7, "fdb", 12, MAC_A, "198.18.0.2")
    neigh = neighbour_message(8, "neigh", 12, "198.19.42.1", MAC_A)
    entries, done = parse_neighbours(fdb + neigh + neighbour_message(9, "fdb", 12, MAC_B, None), 7)
    assert not done
    assert [(e.ifindex, e.flags, e.attributes[1], e.attributes[2].hex(":")) for e in entries] == [
        (12, 2, bytes([198, 18, 0, 2]), MAC_A)  # NTF_SELF, NDA_DST, NDA_LLADDR
    ]
    assert parse_neighbours(neigh, 8)[0][0].attributes == {1: bytes([198, 19, 42, 1]), 2: bytes.fromhex("0242c6132a01")}
    with pytest.raises(OSError, match="malformed"):
        parse_neighbours(bytes(16), 1)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("host_index", -1, "host_index: -1: expected an integer 0-65535"),
        ("host_index", "3", "host_index: '3': expected an integer 0-65535"),
        ("containers_per_host", 1, "containers_per_host: 1: expected an integer 2-65536"),
        ("containers_per_host", True, "containers_per_host: True: expected an integer 2-65536"),
        ("dataplane_reconcile_interval", 0, "dataplane_reconcile_interval: 0: expected seconds"),
    ],
)
def test_config_mistakes_in_the_data_plane_fields(field, value, message):
    with pytest.raises(ConfigError, match=f"^agent.yaml: {re.escape(message)}"):
        parse({"bind_addr": "198.18.250.1", field: value}, "agent.yaml")


def test_config_refuses_one_vxlan_id_for_two_networks():
    networks = [{"id": "a", "vxlan_id": 7}, {"id": "b", "vxlan_id": 7}]
    with pytest.raises(ConfigError, match=r"networks\[1\]\.vxlan_id: 7: expected an id no other network"):
        parse({"bind_addr": "198.18.250.1", "networks": networks}, "agent.yaml")


def test_config_wants_an_ipv4_subnet():
    networks = [{"id": "a", "vxlan_id": 7, "subnet": "fd00::/64"}]
    with pytest.raises(ConfigError, match=r"networks\[0\]\.subnet: 'fd00::/64': expected a subnet such as"):
        parse({"bind_addr": "198.18.250.1", "networks": networks}, "agent.yaml")


def test_config_data_plane_defaults():
    config = parse({"bind_addr": "198.18.250.1"})
    assert (config.host_index, config.containers_per_host, config.dataplane_reconcile_interval) == (None, 64, 30.0)
    config = parse({"bind_addr": "198.18.250.1", "host_index": 65535, "containers_per_host": 65536})
    assert (config.host_index, config.containers_per_host) == (65535, 65536)


def test_journal_of_an_older_schema_keeps_its_networks(tmp_path):
    path = tmp_path / "j.db"
    old = sqlite3.connect(path)
    old.executescript("CREATE TABLE networks (name TEXT PRIMARY KEY); INSERT INTO networks VALUES ('old-net');")
    old.close()
    journal = Journal(path, "me")
    assert journal.networks() == [NetworkConfig("old-net")]
    journal.attached("blue", 42, "198.19.42.0/24")
    journal.attached("blue")  # attached again without parameters: the saved ones stay
    journal.close()
    assert Journal(path, "me").networks() == [NetworkConfig("blue", 42, "198.19.42.0/24"), NetworkConfig("old-net")]


# === two namespace hosts ===========================================================================

VXLAN_ID = 42
UNDERLAY = {"h1": "198.18.250.1", "h2": "198.18.250.2"}
CONTAINERS = {"h1": "198.19.42.1", "h2": "198.19.42.2"}


def require_root() -> None:
    reason = None
    if os.geteuid() != 0:
        reason = "needs root (network namespaces, veth, vxlan)"
    elif shutil.which("ip") is None or shutil.which("bridge") is None:
        reason = "needs iproute2 (ip, bridge)"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"in CI this test must run: {reason}")
        pytest.skip(reason)


def sh(*args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=check)


def mac_of(ip: str) -> str:
    return "02:42:" + ":".join(f"{int(b):02x}" for b in ip.split("."))


class NetnsAgent(AgentProcess):
    """An agent started inside a network namespace (the namespace host's)."""

    def __init__(self, root: Path, name: str, netns: str, settings: dict[str, Any]) -> None:
        super().__init__(root, name, UNDERLAY[name], settings)
        self.netns = netns

    def start(self) -> None:
        log = open(self.dir / "agent.log", "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, "-m", "gossip_agent.cli", "run",
             "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        wait_for(lambda: self.ready(), 20, f"{self.name}'s API to answer")

    def network(self, name: str) -> dict[str, Any]:
        return next(n for n in self.api("GET", "/networks") if n["network"] == name)


class Lab:
    """Namespaces named gltest-dp-<pid>-*: two hosts on one veth, a container on each."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.prefix = f"gltest-dp-{os.getpid()}"
        self.namespaces: list[str] = []
        self.agents: dict[str, NetnsAgent] = {}

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def add_netns(self, name: str) -> str:
        netns = self.ns(name)
        # Slow only while the kernel tears down namespaces someone deleted (seen: 37 s).
        sh("ip", "netns", "add", netns, timeout=90)
        self.namespaces.append(netns)
        sh("ip", "-n", netns, "link", "set", "lo", "up")
        return netns

    def hosts(self, **settings: Any) -> None:
        for host in UNDERLAY:
            self.add_netns(host)
        h1, h2 = self.ns("h1"), self.ns("h2")
        sh("ip", "-n", h1, "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", h2)
        for host, address in UNDERLAY.items():
            sh("ip", "-n", self.ns(host), "addr", "add", f"{address}/24", "dev", "ul0")
            sh("ip", "-n", self.ns(host), "link", "set", "ul0", "up")
        for host in UNDERLAY:
            self.agents[host] = NetnsAgent(self.root, host, self.ns(host), {
                "seeds": [f"{UNDERLAY['h1']}:7946"], "dataplane_reconcile_interval": 1,
                "networks": [{"id": "blue", "vxlan_id": VXLAN_ID, "subnet": "198.19.42.0/24"}, {"id": "plain"}],
                **settings,
            })  # fmt: skip
            self.agents[host].start()

    def container(self, host: str) -> str:
        """A container netns plugged into the host's gbr bridge, address and MAC of the lab's scheme."""
        netns, address = self.add_netns(f"c{host[1:]}"), CONTAINERS[host]
        port = f"gv{VXLAN_ID:x}-{host[1:]}"
        sh("ip", "-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.ns(host))
        sh("ip", "-n", netns, "link", "set", "eth0", "address", mac_of(address))
        sh("ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        sh("ip", "-n", netns, "link", "set", "eth0", "up")
        sh("ip", "-n", self.ns(host), "link", "set", port, "master", f"gbr-{VXLAN_ID}", "up")
        return netns

    def announce(self, host: str) -> None:
        address = CONTAINERS[host]
        value = {"container": f"c{host[1:]}", "mac": mac_of(address), "vtep": UNDERLAY[host]}
        entry = {"table": "overlay", "key": address, "value": json.dumps(value, separators=(",", ":"), sort_keys=True)}
        self.agents[host].api("POST", "/networks/blue/entries", {"entries": [entry]})

    def fdb(self, host: str) -> dict[str, str]:
        """MAC -> remote vtep of the host's gvx device (its own entries with a destination)."""
        out = sh("ip", "netns", "exec", self.ns(host), "bridge", "-j", "fdb", "show", "dev", f"gvx-{VXLAN_ID}").stdout
        return {e["mac"]: e["dst"] for e in json.loads(out or "[]") if "dst" in e}

    def neigh(self, host: str) -> dict[str, str]:
        out = sh("ip", "-n", self.ns(host), "-j", "neigh", "show", "dev", f"gvx-{VXLAN_ID}").stdout
        return {e["dst"]: e.get("lladdr", "") for e in json.loads(out or "[]") if "PERMANENT" in e.get("state", [])}

    def ping(self, source: str, target: str) -> bool:
        result = sh("ip", "netns", "exec", source, "ping", "-c", "1", "-W", "1", target, check=False)
        return result.returncode == 0

    def close(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        for netns in reversed(self.namespaces):
            sh("ip", "netns", "del", netns, check=False)

    def logs(self) -> str:
        return json.dumps({n: a.log()[-1500:] for n, a in self.agents.items()}, indent=1)


@pytest.fixture
def lab(tmp_path) -> Iterator[Lab]:
    require_root()
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def test_two_hosts_program_their_kernels_from_gossip(lab):
    lab.hosts()
    h1, h2 = lab.agents["h1"], lab.agents["h2"]
    for agent in (h1, h2):
        wait_for(lambda a=agent: a.network("blue")["dataplane"] == "on", 10, f"{agent.name}'s data plane on")
        assert agent.network("plain")["dataplane"] == "off: no vxlan_id"
        assert agent.network("blue")["vxlan_id"] == VXLAN_ID
        assert agent.network("blue")["subnet"] == "198.19.42.0/24"
    wait_for(lambda: len(h1.network("blue")["members"]) == 2, 15, "h1 and h2 both in blue")
    c1, c2 = lab.container("h1"), lab.container("h2")
    mac1, mac2 = mac_of(CONTAINERS["h1"]), mac_of(CONTAINERS["h2"])
    lab.announce("h1")
    lab.announce("h2")
    wait_for(lambda: lab.fdb("h2").get(mac1) == UNDERLAY["h1"], 10, "h1's container in h2's fdb")
    wait_for(lambda: lab.neigh("h2").get(CONTAINERS["h1"]) == mac1, 10, "h1's container in h2's neighbours")
    wait_for(lambda: lab.fdb("h1") == {mac2: UNDERLAY["h2"]}, 10, "h2's container (only) in h1's fdb")
    wait_for(lambda: lab.neigh("h1") == {CONTAINERS["h2"]: mac2}, 10, "h2's container (only) in h1's neighbours")
    assert lab.ping(c1, CONTAINERS["h2"]), lab.logs()
    stats = h2.api("GET", "/stats")["dataplane"]
    assert (stats["state"], stats["errors"], stats["pending"]) == ("on", 0, 0), stats
    assert stats["programmed"] >= 2, stats
    assert stats["latency_ms"]["max"] is not None, stats

    # A reconcile puts back what was deleted by hand and removes what was added by hand.
    bogus_mac, bogus_ip = "02:42:c6:13:2a:63", "198.19.42.99"
    sh("ip", "netns", "exec", lab.ns("h1"), "bridge", "fdb", "del", mac2, "dev", f"gvx-{VXLAN_ID}", "self")
    sh("ip", "netns", "exec", lab.ns("h1"), "bridge", "fdb", "add", bogus_mac, "dev", f"gvx-{VXLAN_ID}",
       "dst", "198.18.250.9", "self", "permanent")  # fmt: skip
    sh("ip", "-n", lab.ns("h1"), "neigh", "add", bogus_ip, "lladdr", bogus_mac, "dev", f"gvx-{VXLAN_ID}", "nud",
       "permanent")  # fmt: skip
    wait_for(lambda: lab.fdb("h1") == {mac2: UNDERLAY["h2"]}, 10, "h1's fdb repaired")
    wait_for(lambda: lab.neigh("h1") == {CONTAINERS["h2"]: mac2}, 10, "h1's neighbours repaired")
    assert h1.api("GET", "/stats")["dataplane"]["corrections"] >= 3

    # The cluster's only seed crashes and restarts: its kernel keeps h2's routes (live restore),
    # and no reconcile may take them away before its table is back, however soon it runs.
    h1.signal(signal.SIGKILL)
    h1.wait()
    h1.start()
    deadline = time.monotonic() + 5  # several reconcile intervals (1 s here)
    while time.monotonic() < deadline:
        assert lab.fdb("h1").get(mac2) == UNDERLAY["h2"], "h2's route left h1's kernel after h1's restart"
        time.sleep(0.1)
    wait_for(lambda: h1.network("blue")["entries"] == 2, 15, "h1's table back")

    # A delete takes the kernel's entries away, and the containers no longer reach each other.
    h1.api("DELETE", "/networks/blue/entries", {"entries": [{"table": "overlay", "key": CONTAINERS["h1"]}]})
    wait_for(lambda: mac1 not in lab.fdb("h2"), 10, "h1's container gone from h2's fdb")
    wait_for(lambda: CONTAINERS["h1"] not in lab.neigh("h2"), 10, "h1's container gone from h2's neighbours")
    assert not lab.ping(c2, CONTAINERS["h1"])

    # The writer dies: once it is declared dead, its entries leave the other kernel.
    h2.signal(signal.SIGKILL)
    h2.wait()
    wait_for(lambda: lab.fdb("h1") == {} and lab.neigh("h1") == {}, 20, "dead h2's entries gone from h1's kernel")


def test_bad_values_and_api_attach_that_survives_a_restart(lab):
    lab.hosts()
    h1, h2 = lab.agents["h1"], lab.agents["h2"]
    for body, message in [
        ({"network": "red", "vxlan_id": 0}, "body.vxlan_id"),
        ({"network": "red", "vxlan_id": True}, "body.vxlan_id"),
        ({"network": "red", "vxlan_id": 2**24}, "body.vxlan_id"),
        ({"network": "red", "subnet": "198.19.7.1/24"}, "body.subnet"),
        ({"network": "red", "subnet": "fd00::/64"}, "body.subnet"),
        ({"network": "blue", "vxlan_id": 43}, "attached with vxlan_id 42"),
    ]:
        with pytest.raises(ApiFailure, match=message):
            h1.api("POST", "/networks", body)
    h1.api("POST", "/networks", {"network": "red", "vxlan_id": 7, "subnet": "198.19.7.0/24"})
    h2.api("POST", "/networks", {"network": "red", "vxlan_id": 7})
    wait_for(lambda: h1.network("red")["dataplane"] == "on", 10, "h1's red data plane on")
    good_a, good_b = ({"container": "x", "mac": mac, "vtep": UNDERLAY["h2"]} for mac in (MAC_A, MAC_B))
    entries = [
        {"table": "overlay", "key": "198.19.7.5", "value": "{"},
        {"table": "overlay", "key": "198.19.8.5", "value": json.dumps(good_a)},  # off red's subnet
        {"table": "overlay", "key": "198.19.7.6", "value": json.dumps(good_b)},
        {"table": "other", "key": "198.19.7.7", "value": "not an endpoint, not ours to judge"},
    ]
    wait_for(lambda: len(h1.network("red")["members"]) == 2, 15, "h1 and h2 both in red")
    h2.api("POST", "/networks/red/entries", {"entries": entries})
    wait_for(lambda: h1.api("GET", "/stats")["dataplane"]["bad_values"] == 2, 10, "two bad values counted at h1")
    wait_for(lambda: MAC_B in fdb_text(lab, "h1", 7), 10, "the good entry programmed")
    assert MAC_A not in fdb_text(lab, "h1", 7)
    h1.stop()
    h1.start()
    red = h1.network("red")
    assert (red["vxlan_id"], red["subnet"]) == (7, "198.19.7.0/24")  # from the journal
    wait_for(lambda: h1.network("red")["dataplane"] == "on", 10, "h1's red data plane on after a restart")
    health = h1.api("GET", "/health")
    assert (health["advertise_addr"], health["host_index"], health["containers_per_host"]) == (UNDERLAY["h1"], None, 64)
    # Detach: the vxlan device goes, and the bridge too, as no container is plugged into it.
    h1.api("DELETE", "/networks/red")
    wait_for(lambda: not {"gvx-7", "gbr-7"} & links(lab, "h1"), 5, "gvx-7 and gbr-7 removed")
    assert {"gvx-42", "gbr-42"} <= links(lab, "h1")
    # Devices of a network no longer attached (its removal lost with the last life) are removed
    # at the next start; those of attached networks stay.
    h1.stop()
    sh("ip", "-n", lab.ns("h1"), "link", "add", "gbr-9", "type", "bridge")
    sh("ip", "-n", lab.ns("h1"), "link", "add", "gvx-9", "type", "vxlan", "id", "9", "dstport", "4789")
    h1.start()
    wait_for(lambda: not {"gvx-9", "gbr-9"} & links(lab, "h1"), 10, "the leftover gvx-9 and gbr-9 removed")
    assert {"gvx-42", "gbr-42"} <= links(lab, "h1")


def fdb_text(lab: Lab, host: str, vxlan_id: int) -> str:
    return sh("ip", "netns", "exec", lab.ns(host), "bridge", "fdb", "show", "dev", f"gvx-{vxlan_id}").stdout


def links(lab: Lab, host: str) -> set[str]:
    return {link["ifname"] for link in json.loads(sh("ip", "-n", lab.ns(host), "-j", "link", "show").stdout)}
