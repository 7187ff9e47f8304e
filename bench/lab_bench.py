"""Local-lab benchmark: wall time of site.yml from nothing, of a no-change re-run, and memory per host.

    python bench/lab_bench.py --sizes 8,50,100

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
    hosts = [pid for pid in roots if "sshd" in _cmdline(pid)]
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
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the local lab needs root")
    print(f"{'hosts':>6} {'site.yml s':>11} {'re-run s':>9} {'re-run changed':>15} {'MiB/host':>9} {'lab-down s':>11}")
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="sgl-bench-") as tmp:
            lab = LabSpec(PREFIX, SUBNET, size, Path(tmp) / "hosts.yml")
            lab.prepare()
            timed(lab, "lab-down.yml")
            try:
                up, _ = timed(lab, "site.yml")
                again, output = timed(lab, "site.yml")
                memory = host_memory_mib()
            finally:
                down, _ = timed(lab, "lab-down.yml")
            print(f"{size:>6} {up:>11.1f} {again:>9.1f} {changed(output):>15} {memory:>9.1f} {down:>11.1f}", flush=True)


if __name__ == "__main__":
    main()
