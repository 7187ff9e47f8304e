"""Data-plane benchmark on a local lab of its own: containers per second per host, the time from a
container's creation until every other host of its network has its route (fdb + neighbour entry),
until it answers pings from all of them, and the kernel-programming CPU per 1,000 entries.

    python bench/dataplane_bench.py --sizes 8,30 [--containers 16] [--seed 1]

Each size runs on its own lab (prefix sgd, subnet 198.18.210.0/24), torn down after. Needs root.
Every host joins one network and makes its containers in one call, all hosts at once; the
harness then reads every host's kernel every 0.2 s, so route times are that coarse, and then
pings 40 of the containers, each from up to 4 other hosts, until all answer. Figures are printed, never
asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lab.checker import percentile, wait_for
from lab.churn import Churn
from lab.fleet import CTL, Fleet
from lab.inventory import load
from lab.playbook import LabSpec, playbook
from lab.routes import Endpoint, Routes, endpoint_states

PREFIX, SUBNET = "sgd", "198.18.210.0/24"
NETWORK, VXLAN_ID, OVERLAY = "bench-dp", 4300, "198.19.64.0/18"  # 256 blocks of 64 addresses
POLL = 0.2  # seconds between reads of every host's kernel
REACH_SAMPLE = 40  # containers pinged


async def measure(inventory: str, containers: int, seed: int) -> dict[str, Any]:
    fleet = Fleet(load(inventory))
    await fleet.connect()
    hosts = sorted(fleet.hosts)
    routes = Routes(fleet, {NETWORK: hosts}, {NETWORK: VXLAN_ID})
    churn = Churn(fleet)
    try:
        attach = {"network": NETWORK, "vxlan_id": VXLAN_ID, "subnet": OVERLAY}
        await fleet.each(lambda h: fleet.api(h, "POST", "/networks", attach))
        await wait_for(routes.ready, 60, "the data plane on everywhere")
        before = await fleet.each(lambda h: fleet.api(h, "GET", "/stats"))

        made_at: dict[str, float] = {}  # container address -> wall time its create call returned
        answers: list[float] = []  # the ctl's own time per call

        async def make(host: str) -> None:
            for name in await churn.create_containers(host, NETWORK, containers):
                made_at[churn.containers[(host, NETWORK)][name]] = time.time()
            answers.append(churn.history.ops[-1]["seconds"])

        started = time.monotonic()
        await fleet.each(make)
        all_hosts_rate = len(made_at) / (time.monotonic() - started)
        # Route times: per container, the first read at which every other host had it right.
        endpoints = {ip: e for ip, (e,) in endpoint_states(churn.truth, NETWORK).items() if isinstance(e, Endpoint)}
        routed: dict[str, float] = {}
        deadline = time.monotonic() + 120
        while len(routed) < len(endpoints) and time.monotonic() < deadline:
            kernels = await fleet.each(routes.kernel)
            now = time.time()
            for ip, e in endpoints.items():
                if ip not in routed and all(
                    k[NETWORK].fdb.get(e.mac) == {e.vtep} and k[NETWORK].neigh.get(ip) == e.mac
                    for h, k in kernels.items() if routes.vtep(h) != e.vtep
                ):  # fmt: skip
                    routed[ip] = now - made_at[ip]
            await asyncio.sleep(POLL)
        # Reachable: a sample of containers, each pinged from a container on up to 4 other hosts
        # until all answer (pinging starts once every route is in); each ping's end is stamped on
        # its host (the local lab's hosts share this clock). A sample, because every ping leaves
        # dynamic ARP entries, and this machine's namespaces share 1,024 of them in all.
        rng = random.Random(seed)
        first = {h: next(iter(churn.containers[(h, NETWORK)])) for h in hosts}
        sampled = rng.sample(sorted(endpoints), min(REACH_SAMPLE, len(endpoints)))
        pairs = [(h, endpoints[churn.containers[(h, NETWORK)][first[h]]], ip, True)
                 for ip in sampled for h in rng.sample(hosts, min(4, len(hosts)))
                 if routes.vtep(h) != endpoints[ip].vtep]  # fmt: skip
        reached: dict[str, float] = {}
        while len(reached) < len(sampled) and time.monotonic() < deadline:
            latest: dict[str, float | None] = {}
            for r in await routes.ping([p for p in pairs if p[2] not in reached]):
                ok = r["answered"] and latest.get(r["to"], 0.0) is not None
                latest[r["to"]] = max(latest.get(r["to"]) or 0.0, r["at"]) if ok else None
            reached.update({ip: at - made_at[ip] for ip, at in latest.items() if at is not None})
        after = await fleet.each(lambda h: fleet.api(h, "GET", "/stats"))
        worker = sum(after[h]["dataplane"]["worker_cpu_seconds"] - before[h]["dataplane"]["worker_cpu_seconds"]
                     for h in hosts)  # fmt: skip
        programmed = sum(after[h]["dataplane"]["programmed"] - before[h]["dataplane"]["programmed"] for h in hosts)
        return {
            "containers": len(endpoints),
            "per_call_rate": containers / (sum(answers) / len(answers)),
            "all_hosts_rate": all_hosts_rate,
            "route": [routed[ip] for ip in routed],
            "unrouted": len(endpoints) - len(routed),
            "reachable": [reached[ip] for ip in reached],
            "unreached": len(sampled) - len(reached),
            "cpu_per_1000": 1000 * worker / programmed if programmed else None,
        }
    finally:
        await fleet.each(lambda h: fleet.run(h, f"{CTL} container delete {NETWORK} --all", check=False))
        await fleet.each(lambda h: fleet.api(h, "DELETE", f"/networks/{NETWORK}"))
        await fleet.close()


COLUMNS = ("hosts", "containers", "per call", "all hosts", "route p50", "route p99", "unrouted",
           "reach p50", "reach p99", "unreached", "CPU-s/1000")  # fmt: skip


def row(size: int, r: dict[str, Any]) -> str:
    def p(values: list[float], q: float) -> str:
        value = percentile(values, q)
        return "-" if value is None else f"{value:.2f}"

    cpu = "-" if r["cpu_per_1000"] is None else f"{r['cpu_per_1000']:.3f}"
    rates = f"{r['per_call_rate']:.0f}", f"{r['all_hosts_rate']:.0f}"
    route = p(r["route"], 50), p(r["route"], 99), r["unrouted"]
    reach = p(r["reachable"], 50), p(r["reachable"], 99), r["unreached"]
    cells = [size, r["containers"], *rates, *route, *reach, cpu]
    return " ".join(f"{c!s:>{len(title)}}" for c, title in zip(cells, COLUMNS, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="8,30", help="lab sizes, comma-separated (8,30)")
    parser.add_argument("--containers", type=int, default=16, help="containers per host (16)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the sampled pings (1)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the local lab needs root")
    print(f"seed {args.seed}; {args.containers} containers per host; route and reach times in s from creation")
    print("created/s: one host's ctl call (its own timing), and all hosts at once through SSH (2 cores shared)")
    print(" ".join(COLUMNS))
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="sgl-bench-") as tmp:
            lab = LabSpec(PREFIX, SUBNET, size, Path(tmp) / "hosts.yml")
            lab.prepare()
            playbook(lab, "lab-down.yml")
            try:
                up = playbook(lab, "site.yml")
                if up.returncode != 0:
                    sys.exit(f"site.yml failed for {size} hosts:\n{up.stdout[-3000:]}")
                print(row(size, asyncio.run(measure(str(lab.inventory), args.containers, args.seed))), flush=True)
            finally:
                playbook(lab, "lab-down.yml")


if __name__ == "__main__":
    main()
