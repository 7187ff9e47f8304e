"""What one wakeup costs a process on this machine, before any of the agent's own code runs.

    python bench/wakeup_floor.py            # ~20 s; prints CPU per datagram received

An idle SWIM member wakes about three times a second (its probe, the ack, a peer's probe), so
the idle CPU target (0.02 % of a core = 200 us a second) is a budget for wakeups. A receiver that
does nothing with its datagrams is timed three ways: a blocking recvfrom loop (the kernel's and
the interpreter's floor), asyncio's event loop (what the agent runs on), and uvloop where it is
installed. Slow rates are the idle case (caches gone cold between wakeups), fast ones the busy.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

ADDRESS = ("127.0.0.9", 9999)
RATES = (3, 50, 1000, 5000)  # datagrams a second
SECONDS = 4.0  # at each rate (at most 10,000 datagrams)
IDLE_WAKEUPS = 3  # a second, for an idle SWIM member


def cpu_seconds(pid: int) -> float:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def receive(kind: str) -> None:
    if kind == "blocking":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(ADDRESS)
        while True:
            sock.recvfrom(65536)
    if kind == "uvloop":
        import uvloop

        uvloop.install()

    async def main() -> None:
        await asyncio.get_running_loop().create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=ADDRESS)
        await asyncio.sleep(3600)

    asyncio.run(main())


def measure(kind: str) -> list[float]:
    """Receiver CPU per datagram (us) at each rate."""
    receiver = subprocess.Popen([sys.executable, __file__, "--receiver", kind])
    try:
        time.sleep(1.0)
        if receiver.poll() is not None:
            raise RuntimeError(f"the {kind} receiver exited with {receiver.returncode}")
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        costs = []
        for rate in RATES:
            count = min(int(rate * SECONDS), 10_000)
            before = cpu_seconds(receiver.pid)
            due = time.monotonic()
            for _ in range(count):
                sender.sendto(b"x" * 300, ADDRESS)
                due += 1 / rate
                time.sleep(max(0.0, due - time.monotonic()))
            time.sleep(0.2)
            costs.append((cpu_seconds(receiver.pid) - before) / count * 1e6)
        return costs
    finally:
        receiver.kill()
        receiver.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--receiver", choices=["blocking", "asyncio", "uvloop"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        receive(args.receiver)
        return
    kinds = ["blocking", "asyncio"]
    try:
        import uvloop  # noqa: F401
    except ImportError:
        print("(uvloop is not installed: its row is left out)")
    else:
        kinds.append("uvloop")
    print(f"receiver CPU per datagram, us ({SECONDS:.0f} s at each rate, at most 10,000 datagrams)")
    print(f"{'receiver':>9} " + " ".join(f"{f'{r}/s':>8}" for r in RATES) + f" {'idle floor':>11}")
    for kind in kinds:
        costs = measure(kind)
        floor = costs[0] * IDLE_WAKEUPS / 1e6 * 100  # % of a core for three cold wakeups a second
        print(f"{kind:>9} " + " ".join(f"{c:>8.1f}" for c in costs) + f" {floor:>10.3f}%", flush=True)


if __name__ == "__main__":
    main()
