"""Local-lab benchmark: wall time of lab-up.yml and deploy.yml from nothing, of a no-change
site.yml re-run, and memory per host (every process of the host, the agent included).

    python bench/lab_bench.py --sizes 8,50,100
    python bench/lab_bench.py --init systemd --sizes 3,20

Each size runs on its own lab (prefix sgb, subnet 198.18.200.0/24) and is torn down after.
Needs root. Prints one row per size.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from lab.playbook import LabSpec, playbook

PREFIX, SUBNET = "sgb", "198.18.200.0/24"


def timed(lab: LabSpec, name: str) -> tuple[float, str]:
    started = time.monotonic()
    result = playbook(lab, name)
    if result.returncode != 0:
        sys.exit(f"{name} failed for {lab.size} hosts:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}")
    return time.monotonic() - started, result.stdout


def changed(output: str) -> int:
    return sum(int(n) for n in re.findall(r"changed=(\d+)", output.split("PLAY RECAP")[-1]))


def host_memory_mib() -> float:
    """Mean RSS per lab host: every process whose command line or whose ancestor's names the lab."""
    state = f"scoped-gossip-lab/{PREFIX}"
    roots = [
        int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(int(p.name)).find(state) >= 0
    ]
    hosts = [pid for pid in roots if _cmdline(pid).startswith("unshare")]
    total = 0
    for pid in _tree(set(roots)):
        total += _rss_kib(pid)
    return total / 1024 / max(1, len(hosts))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(roots: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int(Path(f"/proc/{p.name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    seen, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children.get(pid, []))
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="8,50,100")
    parser.add_argument("--init", choices=["sshd", "systemd"], default="sshd", help="kind of lab host (sshd)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the local lab needs root")
    print(f"{args.init} hosts: seconds of each playbook, memory per host with its agent running")
    print(f"{'hosts':>6} {'lab-up s':>9} {'deploy s':>9} {'re-run s':>9} {'re-run changed':>15} {'MiB/host':>9} "
          f"{'lab-down s':>11}")  # fmt: skip
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="sgl-bench-") as tmp:
            lab = LabSpec(PREFIX, SUBNET, size, Path(tmp) / "hosts.yml", init=args.init)
            lab.prepare()
            timed(lab, "lab-down.yml")
            try:
                up, _ = timed(lab, "lab-up.yml")
                deploy, _ = timed(lab, "deploy.yml")
                again, output = timed(lab, "site.yml")
                memory = host_memory_mib()
            finally:
                down, _ = timed(lab, "lab-down.yml")
            print(f"{size:>6} {up:>9.1f} {deploy:>9.1f} {again:>9.1f} {changed(output):>15} {memory:>9.1f} "
                  f"{down:>11.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
