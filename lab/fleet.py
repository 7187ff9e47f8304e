"""asyncssh connections to every host, and bounded fan-out of commands with per-host results.

sshd's MaxStartups (10:30:100 by default) drops concurrent handshakes beyond 10, so connecting is
bounded and retried. `api` speaks HTTP to the agent's unix socket through the SSH connection
(a direct-streamlocal channel, as `ssh -L` does), so reading a host's tables costs the host no
process. Churn still runs `gossip-agent ctl churn` (CTL) on the host, which paces itself there.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncssh

from .inventory import Host

CTL = "/opt/gossip-agent/venv/bin/gossip-agent ctl --json"
API_SOCKET = "/run/gossip-agent/api.sock"  # the gossip_agent role puts it here
API_TIMEOUT = 60  # seconds for one API answer (a dump of 100,000 entries is the largest)
COMMAND_TIMEOUT = 300  # seconds one remote command may take (a big churn batch is the longest)
T = TypeVar("T")


class FleetError(Exception):
    """A host could not be reached or a command failed; the message names the host."""


@dataclass(frozen=True, slots=True)
class Result:
    host: str
    rc: int
    stdout: str
    stderr: str


class Fleet:
    def __init__(self, hosts: Iterable[Host], connect_concurrency: int = 8) -> None:
        self.hosts = {h.name: h for h in hosts}
        self._connections: dict[str, asyncssh.SSHClientConnection] = {}
        self._gate = asyncio.Semaphore(connect_concurrency)

    async def __aenter__(self) -> Fleet:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _connect_one(self, host: Host, attempts: int = 5) -> None:
        delay = 0.2
        for attempt in range(1, attempts + 1):
            try:
                async with self._gate:
                    self._connections[host.name] = await asyncssh.connect(
                        host.address, port=host.port, username=host.user,
                        client_keys=[host.key] if host.key else None, known_hosts=None,
                        keepalive_interval=15, connect_timeout=10,
                    )  # fmt: skip
                return
            except (OSError, asyncssh.Error) as exc:
                if attempt == attempts:
                    raise FleetError(f"{host.name} ({host.address}): cannot connect: {exc}") from None
                await asyncio.sleep(delay)
                delay *= 2

    async def connect(self) -> None:
        await asyncio.gather(*(self._connect_one(h) for h in self.hosts.values()))

    async def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        await asyncio.gather(*(c.wait_closed() for c in self._connections.values()), return_exceptions=True)
        self._connections.clear()

    async def run(self, host: str, command: str, check: bool = True) -> Result:
        try:
            done = await self._connections[host].run(command, timeout=COMMAND_TIMEOUT)
        except (asyncssh.Error, OSError) as exc:
            raise FleetError(f"{host}: {command!r}: {exc}") from None
        result = Result(host, int(done.exit_status or 0), str(done.stdout or ""), str(done.stderr or ""))
        if check and result.rc != 0:
            raise FleetError(f"{host}: {command!r} exited {result.rc}: {result.stderr.strip()[-300:]}")
        return result

    async def each(self, fn: Callable[[str], Awaitable[T]], hosts: Iterable[str] | None = None) -> dict[str, T]:
        names = list(hosts) if hosts is not None else list(self.hosts)
        results = await asyncio.gather(*(fn(name) for name in names))
        return dict(zip(names, results, strict=True))

    async def run_all(self, command: str, hosts: Iterable[str] | None = None, check: bool = True) -> dict[str, Result]:
        return await self.each(lambda name: self.run(name, command, check), hosts)

    async def api(self, host: str, method: str, path: str, body: Any = None, within: float = API_TIMEOUT) -> Any:
        """One request to the agent's control API on `host`; returns the decoded JSON answer."""
        payload = b"" if body is None else json.dumps(body).encode()
        request = (f"{method} {path} HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode() + payload  # fmt: skip
        try:
            async with asyncio.timeout(within):
                reader, writer = await self._connections[host].open_unix_connection(API_SOCKET, encoding=None)
                try:
                    writer.write(request)
                    answer = await reader.read()  # the agent closes after one answer
                finally:
                    writer.close()
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            raise FleetError(f"{host}: {method} {path}: no answer from the agent: {exc}") from None
        head, _, data = answer.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].split()
        if len(status_line) < 2 or not status_line[1].isdigit():
            raise FleetError(f"{host}: {method} {path}: malformed answer {answer[:80]!r}")
        status = int(status_line[1])
        try:
            decoded = json.loads(data) if data else None
        except ValueError:
            raise FleetError(f"{host}: {method} {path}: non-JSON answer {data[:80]!r}") from None
        if status >= 400:
            message = decoded.get("error") if isinstance(decoded, dict) else decoded
            raise FleetError(f"{host}: {method} {path}: HTTP {status}: {message}")
        return decoded

    async def clock_offsets(self) -> dict[str, float]:
        """Host clock minus ours, seconds, from the midpoint of a round trip (0 on the local lab)."""

        async def offset(name: str) -> float:
            sent = time.time()
            remote = float((await self.run(name, "date +%s.%N")).stdout)
            return remote - (sent + time.time()) / 2

        return await self.each(offset)
