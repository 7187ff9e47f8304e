"""Config, keyring and journal units; the clear errors users see for bad config and bad requests."""

from __future__ import annotations

import asyncio
import grp
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gossip_agent.core.wire import TableEvent
from gossip_agent.runtime.config import ConfigError, NetworkConfig, load, parse
from gossip_agent.runtime.crypto import AuthError, Keyring, KeyringError, ReplayError, decode_key, new_key
from gossip_agent.runtime.store import Journal
from gossip_agent.runtime.transport import UDP_RECEIVE_BUFFER, Transport

from .agents import Cluster


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bind_addr": "127.0.0.1", "port": 70000}, "port: 70000: expected a port number 1-65535"),
        ({"bind_addr": "nowhere"}, "bind_addr: 'nowhere': expected an IP address"),
        ({"bind_addr": "0.0.0.0"}, "advertise_addr: missing: required when bind_addr is 0.0.0.0"),
        ({"bind_addr": "127.0.0.1", "seeds": ["127.0.0.2:x"]}, "seeds[0]: '127.0.0.2:x': expected ADDRESS[:PORT]"),
        ({"bind_addr": "127.0.0.1", "networks": [{"id": "a b"}]}, "networks[0].id: 'a b'"),
        ({"bind_addr": "127.0.0.1", "profile": "fast"}, "profile: 'fast': expected one of lan, wan, local"),
        ({"bind_addr": "127.0.0.1", "protocol": {"fanout": 0}}, "protocol: protocol setting 'fanout' must be positive"),
        ({"bind_addr": "127.0.0.1", "protocl": {}}, "protocl: unknown setting"),
        ({"bind_addr": "127.0.0.1", "state_dir": "relative"}, "state_dir: 'relative': expected an absolute path"),
        ({"bind_addr": "127.0.0.1", "api_group": "no-such-group-here"}, "api_group: 'no-such-group-here': expected a"),
        ([1, 2], "must hold a mapping"),
    ],
)
def test_config_mistakes_name_field_value_and_expectation(data, message):
    with pytest.raises(ConfigError) as info:
        parse(data, "agent.yaml")
    assert str(info.value).startswith("agent.yaml: ")
    assert message in str(info.value)


def test_config_defaults_and_overrides():
    config = parse({"bind_addr": "127.0.0.5", "seeds": ["127.0.0.1"], "networks": ["a", {"id": "b", "vxlan_id": 7}],
                    "profile": "local", "protocol": {"fanout": 4}})  # fmt: skip
    assert config.advertise_addr == "127.0.0.5"
    assert config.seeds == (("127.0.0.1", 7946),)
    assert [n.id for n in config.networks] == ["a", "b"]
    assert config.protocol.fanout == 4
    assert config.protocol.probe_interval == 0.5  # from the local profile


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a socket to a group we are not in needs root")
def test_api_group_opens_the_socket_to_that_group_only(tmp_path):
    group = next(g for g in grp.getgrall() if g.gr_gid != os.getgid())  # only a chown can give it
    cluster = Cluster(tmp_path, 204)
    try:
        cluster.add("grouped", 1, seeds=[], api_group=group.gr_name).start()
        socket_path = tmp_path / "grouped" / "api.sock"
        assert oct(socket_path.stat().st_mode & 0o777) == "0o660"
        assert socket_path.stat().st_gid == group.gr_gid
    finally:
        cluster.stop()


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "agent.yaml"
    bad.write_text("port: [1,\n")
    with pytest.raises(ConfigError, match=r"agent.yaml: not valid YAML at line \d"):
        load(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "missing.yaml")


def test_run_with_bad_config_prints_one_line_and_exits_2(tmp_path):
    config = tmp_path / "agent.yaml"
    config.write_text("bind_addr: 127.0.0.1\nport: -1\n")
    result = subprocess.run([sys.executable, "-m", "gossip_agent.cli", "run", "--config", str(config)],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"gossip-agent: error: {config}: port: -1: expected a port number 1-65535"
    ]


def test_keyring_refuses_replays_and_stale_messages():
    key = decode_key(new_key())
    sender, receiver = Keyring([key]), Keyring([key])
    first, second = sender.seal(b"a"), sender.seal(b"b")
    assert receiver.open(second) == b"b"
    assert receiver.open(first) == b"a"  # reordered within the window: still fine
    for again in (first, second):
        with pytest.raises(ReplayError, match="seen before"):
            receiver.open(again)
    stale = sender.seal(b"c", now=time.time() - 3600)
    with pytest.raises(ReplayError, match="too long ago"):
        receiver.open(stale)
    behind = sender.seal(b"d")
    for _ in range(5000):  # the window slides past `behind` unseen
        receiver.open(sender.seal(b"e"))
    with pytest.raises(ReplayError, match="seen before"):
        receiver.open(behind)
    assert Keyring([key]).open(behind) == b"d"  # another receiver has not seen it


def test_keyring_seals_opens_and_rotates(tmp_path):
    a, b = new_key(), new_key()
    path = tmp_path / "keyring.json"
    ring = Keyring([decode_key(a)], path)
    sealed = ring.seal(b"hello")
    assert ring.open(sealed) == b"hello"
    with pytest.raises(AuthError):
        Keyring([decode_key(b)]).open(sealed)
    with pytest.raises(AuthError):
        ring.open(sealed[:-1] + bytes([sealed[-1] ^ 1]))  # tampered
    ring.install(decode_key(b))
    ring.use(decode_key(b))
    assert Keyring.load(path).open(ring.seal(b"x")) == b"x"
    with pytest.raises(KeyringError, match="primary key cannot be removed"):
        ring.remove(decode_key(b))
    ring.remove(decode_key(a))
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(KeyringError, match="expected 32"):
        decode_key("c2hvcnQ=")


def test_journal_keeps_own_entries_and_tombstones(tmp_path):
    journal = Journal(tmp_path / "j.db", "me")
    journal.record([TableEvent("n", "t", "k1", b"v", "me", 3, 1000, False),
                    TableEvent("n", "t", "k2", b"", "me", 4, 1000, True)])  # fmt: skip
    journal.record([TableEvent("n", "t", "k1", b"w", "me", 5, 1000, False)])
    journal.set_meta("incarnation", 2)
    journal.attached("api-net")
    journal.attached("gone-net")
    journal.detached("gone-net")
    journal.close()
    reopened = Journal(tmp_path / "j.db", "me")
    events = {e.key: e for e in reopened.load(now_ms=2000, tombstone_ttl=60)}
    assert events["k1"].value == b"w"
    assert events["k2"].deleted
    assert reopened.meta("lamport") == 5
    assert reopened.meta("incarnation") == 2
    assert reopened.networks() == [NetworkConfig("api-net")]
    assert [e.key for e in reopened.load(now_ms=1000 + 61_000, tombstone_ttl=60)] == ["k1"]  # tombstone expired


@pytest.mark.daemon
def test_api_metrics_and_clear_4xx_for_bad_requests(tmp_path):
    cluster = Cluster(tmp_path, 201)
    agent = cluster.add("solo", 1, networks=[{"id": "net"}], seeds=[], metrics_addr="127.0.201.1:9946")
    try:
        agent.start()
        agent.api("POST", "/networks/net/entries", {"entries": [{"table": "t", "key": "k", "value": "v"}]})
        metrics = agent.api("GET", "/metrics")
        assert 'gossip_entries{network="net"} 1.0' in metrics
        assert 'gossip_members{state="alive"} 1.0' in metrics
        with urllib.request.urlopen("http://127.0.201.1:9946/metrics", timeout=10) as response:
            assert 'gossip_entries{network="net"} 1.0' in response.read().decode()
        cases = [
            ("POST", "/networks/net/entries", {"entries": [{"table": "t"}]}, 400, "missing field 'key'"),
            ("POST", "/networks/net/entries", {"entries": []}, 400, "empty list"),
            ("POST", "/networks/net/entries", {"entries": [{"table": "t", "key": "k", "value": 5}]}, 400,
             "value: expected str"),
            ("POST", "/networks/other/entries", {"entries": [{"table": "t", "key": "k", "value": ""}]}, 404,
             "not attached"),
            ("DELETE", "/networks/net/entries", {"entries": [{"table": "t", "key": "nope"}]}, 409, "no entry t/nope"),
            ("GET", "/nowhere", None, 404, "no such resource"),
            ("PATCH", "/members", None, 405, "not allowed"),
            ("PUT", "/faults", {"peer": "127.0.0.9", "drop": 2}, 400, "probability"),
            ("GET", "/keys", None, 409, "without a keyring"),
        ]  # fmt: skip
        from gossip_agent.runtime.client import ApiFailure

        for method, path, body, status, message in cases:
            with pytest.raises(ApiFailure) as info:
                agent.api(method, path, body)
            assert info.value.status == status, (method, path)
            assert message in str(info.value), (method, path)
        result = agent.ctl("put", "other", "t", "k", "v")
        assert result.returncode == 2
        assert "the agent refused:" in result.stderr
        assert "Traceback" not in result.stderr
        assert oct((tmp_path / "solo" / "api.sock").stat().st_mode & 0o777) == "0o600"
        missing = subprocess.run([sys.executable, "-m", "gossip_agent.cli", "ctl", "--socket", "/nonexistent.sock",
                                  "health"], capture_output=True, text=True, timeout=30)  # fmt: skip
        assert missing.returncode == 2
        assert "no agent answers at /nonexistent.sock" in missing.stderr
    finally:
        cluster.stop()


def _raw_http(path: str, data: bytes) -> bytes:
    """Send raw bytes to the API socket; everything the agent answers until it closes."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.daemon
def test_api_http_keep_alive_caps_and_a_joining_health(tmp_path):
    cluster = Cluster(tmp_path, 202)
    # Its only seed never answers: it is up but has not joined.
    agent = cluster.add("lonely", 1, networks=[{"id": "net"}], seeds=["127.0.202.9:7946"])
    try:
        agent.start()
        socket_path = str(tmp_path / "lonely" / "api.sock")
        two = (
            b"GET /stats HTTP/1.1\r\nHost: a\r\n\r\n" + b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        answers = _raw_http(socket_path, two)
        assert answers.count(b"HTTP/1.1 ") == 2  # two requests, one connection
        assert b"HTTP/1.1 503 " in answers
        assert b'"status": "joining"' in answers
        huge_head = b"GET /stats HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"x" * 20_000 + b"\r\n\r\n"
        assert _raw_http(socket_path, huge_head).startswith(b"HTTP/1.1 431 ")
        big_body = b"POST /networks HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999\r\n\r\n"
        assert _raw_http(socket_path, big_body).startswith(b"HTTP/1.1 413 ")
        assert _raw_http(socket_path, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        assert agent.api("GET", "/stats")["node"] == "lonely"  # and still serving
        result = agent.ctl("health")
        assert result.returncode != 0
        assert "joining" in result.stderr
    finally:
        cluster.stop()


def test_a_busy_agents_socket_holds_a_burst_and_counts_what_it_drops():
    """While the loop is busy, the kernel holds datagrams for it: thousands (the default buffer
    held under a hundred, and a write burst dropped probes with table events), and what does not
    fit is counted from /proc/net/udp, not lost without trace."""
    if os.geteuid() != 0 and int(Path("/proc/sys/net/core/rmem_max").read_text()) < UDP_RECEIVE_BUFFER:
        pytest.skip("not root, and net.core.rmem_max holds the socket to the default buffer")
    received: list[bytes] = []

    async def burst() -> tuple[int, int | None, int | None]:
        transport = Transport("127.0.0.1", 0, None, lambda _addr, data: received.append(data),
                              lambda _frame: b"", lambda _name: None, 1 << 20, 1.0)  # fmt: skip
        await transport.start()
        try:
            port = transport._udp.get_extra_info("sockname")[1]  # type: ignore[union-attr]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                for _ in range(sent):  # the loop runs none of it until we yield: a busy agent
                    sender.sendto(b"x" * 1400, ("127.0.0.1", port))
            for _ in range(100):  # up to 5 s for the loop to read what the kernel held
                if len(received) + (transport.receive_drops() or 0) >= sent:
                    break
                await asyncio.sleep(0.05)
            return len(received), transport.receive_drops(), transport.receive_buffer
        finally:
            await transport.close()

    sent = 12_000
    held, dropped, buffer = asyncio.run(burst())
    assert held >= 2_000, f"the kernel held only {held} of a burst of {sent} datagrams"
    assert dropped is not None
    assert dropped > 0
    assert held + dropped == sent
    assert buffer is not None
    assert buffer >= UDP_RECEIVE_BUFFER
