"""Real agent processes on 127.0.x.y: membership, scoped convergence, crash, leave, garbage, keys."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import struct
import threading
import time

import pytest

from gossip_agent.core import wire
from gossip_agent.runtime.client import ApiFailure

from .agents import Cluster, wait_for

pytestmark = pytest.mark.daemon

# Networks with overlapping membership: a01-a08 in red, a07-a14 in green, a13-a20 and a01 in blue.
NETWORKS = {"red": range(1, 9), "green": range(7, 15), "blue": [1, *range(13, 21)]}


def networks_of(i: int) -> list[str]:
    return [name for name, members in NETWORKS.items() if i in members]


@pytest.fixture
def cluster(tmp_path, request):
    block = 100 + (os.getpid() + hash(request.node.name)) % 100  # separate addresses per test
    c = Cluster(tmp_path, block)
    yield c
    c.stop()


def test_twenty_agents_scoped_convergence(cluster):
    cluster.start(20, networks_of)
    names = set(cluster.agents)
    wait_for(lambda: cluster.alive_everywhere(names), 30, "all 20 agents to see all 20 alive")
    writers = {"red": "a02", "green": "a10", "blue": "a16"}
    for network, writer in writers.items():
        result = cluster.agents[writer].ctl("churn", network, "--count", "667", "--prefix", f"{network}-")
        assert result.returncode == 0, result.stderr
    expected = {n: {f"{n}-{i}" for i in range(667)} for n in NETWORKS}
    for network, members in NETWORKS.items():
        for i in members:
            agent = cluster.agents[f"a{i:02d}"]
            wait_for(lambda a=agent, n=network: a.keys(n) == expected[n], 30, f"{agent.name} to hold all of {network}")
    for name, agent in cluster.agents.items():
        mine = set(networks_of(int(name[1:])))
        assert {n["network"] for n in agent.api("GET", "/networks")} == mine
        for network in set(NETWORKS) - mine:
            with pytest.raises(Exception, match="not attached"):
                agent.api("GET", f"/networks/{network}/entries")
        assert agent.api("GET", "/stats")["counters"].get("dropped_out_of_scope", 0) == 0, name


def test_crash_restart_and_graceful_leave(cluster):
    cluster.start(5, lambda i: ["net"])
    agents = cluster.agents
    names = set(agents)
    wait_for(lambda: cluster.alive_everywhere(names), 30, "5 agents alive everywhere")
    victim = agents["a04"]
    victim.api("POST", "/networks", {"network": "joined-by-api"})
    victim.api("POST", "/networks/net/entries", {"entries": [{"table": "ep", "key": k, "value": k} for k in "abc"]})
    victim.api("DELETE", "/networks/net/entries", {"entries": [{"table": "ep", "key": "a"}]})
    wait_for(lambda: agents["a01"].keys("net") == {"b", "c"}, 10, "a04's entries at a01")
    victim.signal(signal.SIGKILL)
    victim.wait()
    others = [a for n, a in agents.items() if n != "a04"]
    for agent in others:  # local profile: suspicion bound ~3 x 0.5 s x log10(6) x 3, well under 15 s
        wait_for(lambda a=agent: a.keys("net") == set(), 15, f"{agent.name} to withdraw a04's entries")
    victim.start()
    assert {n["network"] for n in victim.api("GET", "/networks")} == {"net", "joined-by-api"}  # from the journal
    for agent in others:
        # Back from the journal; the delete made before the crash is not resurrected.
        wait_for(lambda a=agent: a.keys("net") == {"b", "c"}, 15, f"{agent.name} to see a04's entries again")
    leaver = agents["a05"]
    leaver.signal(signal.SIGTERM)
    assert leaver.wait() == 0
    for agent in others[:3]:
        wait_for(lambda a=agent: a.states().get("a05") == "left", 10, f"{agent.name} to see a05 as left")
    leaver.start()  # a graceful restart: the new life must overturn the leave of the old one
    for agent in others[:3]:
        wait_for(lambda a=agent: a.states().get("a05") == "alive", 15, f"{agent.name} to see a05 back")


def test_a_starting_agent_is_in_its_networks_before_its_socket_opens(cluster):
    # A restarted agent's peers go on pushing its networks' events to it: read before its
    # networks were attached, they were dropped as out of scope (the lab's scope check failed).
    agent = cluster.add("a01", 1, networks=[{"id": "net"}])
    addr = (agent.address, 7946)
    event = wire.encode_datagram("a02", [wire.TableEvent("net", "t", "k", b"v", "a02", 5, 0, False)])
    done = threading.Event()

    def flood() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            while not done.is_set():
                udp.sendto(event, addr)
                time.sleep(0.0002)

    sender = threading.Thread(target=flood)
    sender.start()
    try:
        agent.start()
    finally:
        done.set()
        sender.join()
    assert agent.api("GET", "/stats").get("out_of_scope_by_network", {}) == {}


def test_garbage_datagrams_and_streams_are_counted_not_fatal(cluster):
    cluster.start(2, lambda i: ["net"])
    target = cluster.agents["a01"]
    addr = (target.address, 7946)
    rng = random.Random(20261129)
    print("garbage seed 20261129")
    valid = wire.encode_datagram("a02", [wire.TableEvent("net", "t", "k", b"v", "a02", 5, 0, False)])
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(100_000):
        if i % 2:
            data = rng.randbytes(rng.randint(0, 300))
        else:
            data = bytearray(valid)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        udp.sendto(data, addr)
    udp.close()
    for i in range(1000):
        with socket.create_connection(addr, timeout=5) as tcp:
            if i % 3 == 0:
                tcp.sendall(struct.pack(">I", 2**31))  # an absurd length
            elif i % 3 == 1:
                body = rng.randbytes(rng.randint(1, 200))
                tcp.sendall(struct.pack(">I", len(body)) + body)
            else:
                tcp.sendall(b"GET / HTTP/1.0\r\n\r\n")
    assert target.api("GET", "/health")["status"] == "ready"
    wait_for(
        lambda: target.api("GET", "/stats")["counters"].get("dropped_malformed", 0) > 1000,
        20, "malformed datagrams to be counted",
    )  # fmt: skip
    # Every garbage stream is counted: unreadable, malformed, or refused while 64 were being read
    # (asyncio accepts a burst of connections in one go).
    streams = ("dropped_stream_transport", "dropped_stream_malformed", "streams_rejected_busy")
    wait_for(
        lambda: sum(target.api("GET", "/stats")["counters"].get(k, 0) for k in streams) >= 1000,
        20, "every garbage stream to be counted",
    )  # fmt: skip
    # Still a working member: a new entry still reaches the other agent.
    target.api("POST", "/networks/net/entries", {"entries": [{"table": "t", "key": "after", "value": "x"}]})
    wait_for(lambda: "after" in cluster.agents["a02"].keys("net"), 10, "a write after the garbage to spread")


def _keyring(path, *keys):
    import json

    path.write_text(json.dumps({"keys": list(keys)}))
    path.chmod(0o600)
    return str(path)


def test_wrong_key_stays_out_and_rotation_keeps_everyone_alive(cluster, tmp_path):
    from gossip_agent.runtime.crypto import new_key

    old, new, wrong = new_key(), new_key(), new_key()
    for i in range(1, 5):
        cluster.add(f"a{i:02d}", i, networks=[{"id": "net"}], keyring_file=_keyring(tmp_path / f"k{i}.json", old))
    intruder = cluster.add("a05", 5, networks=[{"id": "net"}], keyring_file=_keyring(tmp_path / "k5.json", wrong))
    for agent in cluster.agents.values():
        agent.start()
    members = {f"a{i:02d}" for i in range(1, 5)}
    wait_for(lambda: cluster.alive_everywhere(members), 30, "keyed agents to see each other")
    assert set(intruder.states()) == {"a05"}
    assert "a05" not in cluster.agents["a01"].states()
    assert cluster.agents["a01"].api("GET", "/stats")["counters"].get("dropped_auth_failed", 0) > 0
    keyed = [cluster.agents[n] for n in sorted(members)]
    for method in ("POST", "PUT"):  # install the new key everywhere, then make it primary everywhere
        for agent in keyed:
            agent.api(method, "/keys", {"key": new})
    for agent in keyed:
        agent.api("DELETE", "/keys", {"key": old})
    keyed[0].api("POST", "/networks/net/entries", {"entries": [{"table": "t", "key": "rotated", "value": "x"}]})
    for agent in keyed:
        wait_for(lambda a=agent: "rotated" in a.keys("net"), 10, f"{agent.name} to get an entry after rotation")
        assert agent.api("GET", "/keys")["keys"] == [agent.api("GET", "/keys")["primary"]]
        assert agent.api("GET", "/stats")["counters"].get("member_suspected", 0) == 0, agent.name


def test_fault_hook_drops_traffic_to_one_peer_until_cleared(cluster):
    cluster.start(2, lambda i: ["net"])
    a, b = cluster.agents["a01"], cluster.agents["a02"]
    wait_for(lambda: cluster.alive_everywhere({"a01", "a02"}), 20, "both agents alive")
    for agent, peer in ((a, b), (b, a)):  # both ways, so no sync can carry it either
        result = agent.ctl("fault", "set", peer.address, "--drop", "1.0")
        assert result.returncode == 0, result.stderr
    a.api("POST", "/networks/net/entries", {"entries": [{"table": "t", "key": "held", "value": "x"}]})
    wait_for(lambda: a.api("GET", "/stats")["counters"].get("dropped_fault", 0) >= 3, 10, "a01 to drop gossip to a02")
    assert "held" not in b.keys("net")
    assert a.ctl("fault", "clear").returncode == 0
    assert b.ctl("fault", "clear").returncode == 0
    wait_for(lambda: "held" in b.keys("net"), 15, "the entry to reach a02 once the fault is cleared")


PATH = "/networks/net/entries"


def _post(sock: socket.socket, key: str) -> None:
    body = json.dumps({"entries": [{"table": "ep", "key": key, "value": key}]}).encode()
    head = f"POST /networks/net/entries HTTP/1.1\r\nHost: a\r\nContent-Length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body)


def _answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def test_writes_in_one_turn_share_a_commit_answered_only_when_durable(cluster):
    """Group commit: requests that arrive together are journaled in one transaction; each is
    answered only after it, so a SIGKILL right after the answers loses none. A journal that
    cannot be written is answered 500, and the agent goes on."""
    agent = cluster.add("solo", 1, networks=[{"id": "net"}], seeds=[])
    agent.start()
    conns = []
    for _ in range(4):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(10)
        conn.connect(agent.socket)
        conns.append(conn)
    keys = set()
    for burst in range(50):
        for i, conn in enumerate(conns):
            _post(conn, f"k{burst}-{i}")
            keys.add(f"k{burst}-{i}")
        for conn in conns:
            assert _answer(conn).startswith(b"HTTP/1.1 200 ")
    commits = agent.api("GET", "/stats")["counters"]["journal_group_commits"]
    print(f"{len(keys)} requests, {commits} journal commits")
    assert commits < len(keys)  # some requests shared one
    agent.signal(signal.SIGKILL)
    agent.wait()
    for conn in conns:
        conn.close()
    agent.start()
    assert agent.keys("net") == keys
    # Another writer holds the journal's lock past our wait for it: writes are applied but not
    # durable (500), and a detach changes nothing (500).
    locker = sqlite3.connect(agent.dir / "state" / "journal.db", isolation_level=None)

    def refused(method: str, path: str, body: dict) -> str:
        with pytest.raises(ApiFailure) as info:
            agent.api(method, path, body)
        assert info.value.status == 500
        return str(info.value)

    locker.execute("BEGIN IMMEDIATE")
    try:
        late = {"entries": [{"table": "ep", "key": "late", "value": "v"}]}
        assert "database is locked; the write is applied but not yet durable" in refused("POST", PATH, late)
        refused("DELETE", PATH, {"entries": [{"table": "ep", "key": "k0-0"}]})
        refused("DELETE", "/networks/net", None)
        assert [n["network"] for n in agent.api("GET", "/networks")] == ["net"]
    finally:
        locker.execute("ROLLBACK")
    # Stopped before the retry is due: the leave's last try makes them durable.
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0
    agent.start()
    assert agent.keys("net") == keys - {"k0-0"} | {"late"}
    assert agent.api("GET", "/stats")["counters"].get("journal_errors", 0) == 0  # a new life
    # A delete refused so may be sent again (not "no entry"), and is then durable.
    locker.execute("BEGIN IMMEDIATE")
    try:
        refused("DELETE", PATH, {"entries": [{"table": "ep", "key": "k0-1"}]})
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    agent.api("DELETE", PATH, {"entries": [{"table": "ep", "key": "k0-1"}]})
    agent.signal(signal.SIGKILL)
    agent.wait()
    agent.start()
    assert agent.keys("net") == keys - {"k0-0", "k0-1"} | {"late"}
