"""Real agent processes on loopback addresses (127.0.x.y), for the daemon tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from gossip_agent.runtime.client import ApiFailure, ApiUnavailable, call


def wait_for(predicate: Callable[[], Any], deadline: float, label: str, interval: float = 0.1) -> Any:
    """Poll until `predicate` returns something truthy; fail saying what was awaited and how long."""
    started = time.monotonic()
    last_error: Exception | None = None
    while time.monotonic() - started < deadline:
        try:
            result = predicate()
            if result:
                return result
        except (ApiUnavailable, ApiFailure) as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {deadline:.0f}s waiting for {label}" + (f" (last: {last_error})" if last_error else "")
    )


class AgentProcess:
    def __init__(self, root: Path, name: str, address: str, settings: dict[str, Any]) -> None:
        self.name, self.address, self.dir = name, address, root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = str(self.dir / "api.sock")
        self.config = self.dir / "agent.yaml"
        data = {
            "node_name": name, "bind_addr": address, "profile": "local", "log_level": "warning",
            "state_dir": str(self.dir / "state"), "api_socket": self.socket, **settings,
        }  # fmt: skip
        self.config.write_text(yaml.safe_dump(data))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.dir / "agent.log", "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gossip_agent.cli", "run", "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        wait_for(lambda: self.ready(), 20, f"{self.name}'s API to answer")

    def ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.process.returncode}: {self.log()[-2000:]}")
        if not os.path.exists(self.socket):
            return False
        try:
            return self.api("GET", "/health")["status"] == "ready"
        except ApiFailure as exc:
            return exc.status == 503  # up, joining: its seeds may not run yet

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return call(self.socket, method, path, body, timeout=10)

    def signal(self, sig: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)

    def wait(self, timeout: float = 10) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        self.process = None
        return code

    def stop(self) -> None:
        """End our own child by its PID: SIGTERM, then SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def log(self) -> str:
        path = self.dir / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def keys(self, network: str) -> set[str]:
        return {e["key"] for e in self.api("GET", f"/networks/{network}/entries")["entries"]}

    def states(self) -> dict[str, str]:
        return {m["name"]: m["state"] for m in self.api("GET", "/members")}

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gossip_agent.cli", "ctl", "--socket", self.socket, *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip


class Cluster:
    """`size` agents on 127.0.<block>.1..size; the first three are the seeds."""

    def __init__(self, root: Path, block: int) -> None:
        self.root, self.block = root, block
        self.agents: dict[str, AgentProcess] = {}

    def add(self, name: str, index: int, **settings: Any) -> AgentProcess:
        settings.setdefault("seeds", [f"127.0.{self.block}.{i}:7946" for i in (1, 2, 3)])
        agent = AgentProcess(self.root, name, f"127.0.{self.block}.{index}", settings)
        self.agents[name] = agent
        return agent

    def start(self, size: int, networks: Callable[[int], list[str]] | None = None, **settings: Any) -> None:
        for i in range(1, size + 1):
            nets = networks(i) if networks else []
            self.add(f"a{i:02d}", i, networks=[{"id": n} for n in nets], **settings)
        for agent in self.agents.values():
            agent.start()

    def alive_everywhere(self, names: set[str]) -> bool:
        for name in names:
            states = self.agents[name].states()
            if {n for n, s in states.items() if s == "alive"} != names:
                return False
        return True

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop()

    def dump_logs(self) -> str:
        return json.dumps({n: a.log()[-1500:] for n, a in self.agents.items()}, indent=1)
