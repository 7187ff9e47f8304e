"""Daemon benchmarks on loopback: real agent processes, real sockets. Prints figures.

    python bench/agent_bench.py                 # 30 agents: 1,000 and 10,000 entries, idle CPU, RSS
    python bench/agent_bench.py --only requests # 30 agents, 4 writers, one entry per API request
    python bench/agent_bench.py --only decode   # events decoded and merged per second, one core
    python bench/agent_bench.py --agents 10     # a smaller cluster

Every agent runs the `lan` profile (200 ms gossip, as NetworkDB). Addresses: 127.0.250.x.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "agent" / "src"))
sys.path.insert(0, str(ROOT))

from gossip_agent.core.config import lan  # noqa: E402
from gossip_agent.core.node import Node  # noqa: E402
from gossip_agent.core.wire import Alive, NodeNetwork, TableEvent, encode_datagram  # noqa: E402
from gossip_agent.runtime.client import Session  # noqa: E402
from tests.agent.agents import Cluster, wait_for  # noqa: E402

TICKS = 100  # clock ticks per second, for /proc/<pid>/stat
IDLE_WINDOW = 30.0  # seconds: an idle agent runs about a millisecond a second


def cpu_seconds(pid: int) -> float:
    """Time on a CPU, to the nanosecond where the kernel keeps schedstat (ticks are 10 ms)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except FileNotFoundError:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def counts(cluster: Cluster) -> list[int]:
    return [a.api("GET", "/networks")[0]["entries"] for a in cluster.agents.values()]


def converge(cluster: Cluster, expected: int, label: str) -> float:
    """Seconds until every agent holds `expected` entries, polled every 20 ms."""
    started = time.monotonic()
    wait_for(lambda: all(c == expected for c in counts(cluster)), 300, label, interval=0.02)
    return time.monotonic() - started


def last_arrival(cluster: Cluster, prefix: str, deleted: bool) -> float:
    """Wall time the last agent took in the last version (entry or tombstone) of the keys under
    `prefix`, from the agents' own record of when each version arrived: polling 30 agents takes
    tens of milliseconds a round on 2 cores, which would be most of a 0.1 s figure."""
    latest = 0
    for agent in cluster.agents.values():
        for entry in agent.api("GET", "/networks/net/entries?all=1")["entries"]:
            if entry["key"].startswith(prefix) and entry["deleted"] == deleted:
                latest = max(latest, entry["seen_wall_ms"])
    return latest / 1000


def churn_phase(cluster: Cluster, count: int, prefix: str) -> None:
    writer = cluster.agents["a01"]
    pids = [a.process.pid for a in cluster.agents.values() if a.process]
    before = sum(cpu_seconds(p) for p in pids)
    result = writer.ctl("churn", "net", "--count", str(count), "--prefix", prefix)
    assert result.returncode == 0, result.stderr
    written = time.time()
    created = converge(cluster, count, f"{count} entries everywhere")
    cpu_create = sum(cpu_seconds(p) for p in pids) - before
    rss_writer, rss_reader = rss_mib(pids[0]), rss_mib(pids[-1])
    created_exact = max(0.0, last_arrival(cluster, prefix, False) - written)
    result = writer.ctl("churn", "net", "--count", str(count), "--prefix", prefix, "--delete")
    assert result.returncode == 0, result.stderr
    written = time.time()
    deleted = converge(cluster, 0, f"{count} deletes everywhere")
    deleted_exact = max(0.0, last_arrival(cluster, prefix, True) - written)
    print(
        f"{count:>8,} {created:>16.2f} {created_exact:>5.2f} {deleted:>16.2f} {deleted_exact:>5.2f} "
        f"{cpu_create:>16.1f} {rss_writer:>11.1f} {rss_reader:>11.1f}",
        flush=True,
    )


def received(cluster: Cluster) -> tuple[int, int]:
    """Table events received by gossip (eager tree and rumours) and by sync, over all agents."""
    gossip = sync = 0
    for agent in cluster.agents.values():
        counters = agent.api("GET", "/stats")["counters"]
        gossip += counters.get("events_in", 0)
        sync += counters.get("sync_entries_in", 0)
    return gossip, sync


def requests_phase(cluster: Cluster, count: int, writers: int, delete: bool) -> None:
    """The side-by-side method: `writers` agents, each sent its share of `count` entries one per
    API request on a kept-alive connection, all at once; then until every agent agrees."""
    names = sorted(cluster.agents)[:writers]
    pids = [a.process.pid for a in cluster.agents.values() if a.process]
    cpu_before = sum(cpu_seconds(p) for p in pids)
    gossip_before, sync_before = received(cluster)
    failures: list[BaseException] = []
    finished: list[float] = []  # wall time each writer's last request returned

    def write(name: str, index: int) -> None:
        try:
            with Session(cluster.agents[name].socket) as session:
                for i in range(index, count, writers):
                    entry = {"table": "endpoints", "key": f"req-{i:06d}"}
                    if delete:
                        session.request("DELETE", "/networks/net/entries", {"entries": [entry]})
                    else:
                        value = f"198.19.{(i >> 8) & 255}.{i & 255}/16 02:42:c6:13:{(i >> 8) & 255:02x}:{i & 255:02x}"
                        session.request("POST", "/networks/net/entries", {"entries": [{**entry, "value": value}]})
            finished.append(time.time())
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(n, i)) for i, n in enumerate(names)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    written = time.monotonic() - started
    if failures:
        raise failures[0]
    after = converge(cluster, 0 if delete else count, f"{count} {'deletes' if delete else 'entries'} everywhere")
    cpu = sum(cpu_seconds(p) for p in pids) - cpu_before
    gossip, sync = received(cluster)
    exact = max(0.0, last_arrival(cluster, "req-", delete) - max(finished))
    needed = count * (len(cluster.agents) - 1)
    print(
        f"{'delete' if delete else 'create':>7} {count:>7,} {count / written:>8,.0f} {after:>13.2f} {exact:>5.2f} "
        f"{(gossip - gossip_before) / needed:>7.2f} + {(sync - sync_before) / needed:<5.2f} {cpu:>9.1f}",
        flush=True,
    )


def requests_bench(agents: int, writers: int = 4) -> None:
    with tempfile.TemporaryDirectory(prefix="gossip-bench-") as tmp:
        cluster = Cluster(Path(tmp), 251)
        try:
            cluster.start(agents, lambda i: ["net"], profile="lan")
            wait_for(lambda: cluster.alive_everywhere(set(cluster.agents)), 120, f"{agents} agents alive everywhere")
            print(
                f"\n## {agents} agents (lan profile), {writers} writers, one entry per request, kept-alive connections"
            )
            print(
                f"{'':>7} {'entries':>7} {'req/s':>8} {'after: polled':>13}/exact "
                f"{'copies (gossip + sync)':>22} {'CPU-s all':>9}"
            )
            for count in (1000, 10_000):
                requests_phase(cluster, count, writers, delete=False)
                requests_phase(cluster, count, writers, delete=True)
        finally:
            cluster.stop()


def cluster_bench(agents: int) -> None:
    with tempfile.TemporaryDirectory(prefix="gossip-bench-") as tmp:
        cluster = Cluster(Path(tmp), 250)
        try:
            started = time.monotonic()
            cluster.start(agents, lambda i: ["net"], profile="lan")
            names = set(cluster.agents)
            wait_for(lambda: cluster.alive_everywhere(names), 120, f"{agents} agents alive everywhere")
            print(
                f"\n## {agents} agents on loopback (lan profile); up and joined in {time.monotonic() - started:.1f} s"
            )
            pids = [a.process.pid for a in cluster.agents.values() if a.process]
            before = [cpu_seconds(p) for p in pids]
            time.sleep(IDLE_WINDOW)
            idle = [(cpu_seconds(p) - b) / IDLE_WINDOW * 100 for p, b in zip(pids, before, strict=True)]
            print(
                f"idle CPU per agent: mean {sum(idle) / len(idle):.3f}% max {max(idle):.3f}% of a core "
                f"(over {IDLE_WINDOW:.0f} s); RSS {rss_mib(pids[0]):.1f} MiB"
            )
            print(
                f"\n{'entries':>8} {'create s: polled':>16}/exact {'delete s: polled':>16}/exact "
                f"{'CPU-s all (new)':>16} {'RSS wr MiB':>11} {'RSS rd MiB':>11}"
            )
            churn_phase(cluster, 1000, "small-")
            churn_phase(cluster, 10_000, "big-")
        finally:
            cluster.stop()


def decode_bench(events: int = 200_000) -> None:
    """Datagrams full of new table events from another owner, decoded, merged and forwarded down
    the eager tree by one node of a 30-member network."""
    config = lan()
    node = Node("me", ("127.0.0.1", 7946), config, random.Random(1), 0.0)
    node.attach("net", 0.0)
    peers = [f"peer-{i:02d}" for i in range(29)]
    for i, peer in enumerate(peers):
        news = [Alive(peer, 1, (f"127.0.1.{i + 1}", 7946)), NodeNetwork(peer, "net", 1, True)]
        node.handle_datagram((f"127.0.1.{i + 1}", 7946), encode_datagram(peer, news), 0.0)
    node.take_datagrams()
    per_datagram = 12
    datagrams = []
    for start in range(0, events, per_datagram):
        batch = [
            TableEvent(
                "net",
                "endpoints",
                f"ep-{i:07d}",
                b"198.19.1.2/16 02:42:c6:13:01:02",
                "peer-00",
                i + 1,
                1_700_000_000_000,
                False,
            )
            for i in range(start, min(events, start + per_datagram))
        ]
        datagrams.append(encode_datagram("peer-00", batch))
    started = time.perf_counter()
    sent = 0
    for n, data in enumerate(datagrams):
        node.handle_datagram(("127.0.1.1", 7946), data, 1.0 + n * 1e-4)
        node.tick(1.0 + n * 1e-4)  # eager batches leave when due, as the daemon's timer does
        sent += len(node.take_datagrams())
    elapsed = time.perf_counter() - started
    stored = sum(1 for _ in node.networks["net"].table.visible())
    print(
        f"\n## decode + merge on one core: {events / elapsed:,.0f} events/s "
        f"({events:,} events in {len(datagrams):,} datagrams of ~{len(datagrams[0])} B; {stored:,} stored, "
        f"{sent:,} datagrams sent on)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("cluster", "decode", "requests"))
    parser.add_argument("--agents", type=int, default=30)
    args = parser.parse_args()
    if args.only in (None, "decode"):
        decode_bench()
    if args.only in (None, "cluster"):
        cluster_bench(args.agents)
    if args.only in (None, "requests"):
        requests_bench(args.agents)


if __name__ == "__main__":
    main()
