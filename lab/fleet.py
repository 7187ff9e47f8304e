"""asyncssh connections to every host, and bounded fan-out of commands with per-host results.

sshd's MaxStartups (10:30:100 by default) drops concurrent handshakes beyond 10, so connecting is
bounded and retried. `api` speaks HTTP to the agent's unix socket through the SSH connection
(a direct-streamlocal channel, as `ssh -L` does), so reading a host's tables costs the host no
process. Churn still runs `gossip-agent ctl churn` (CTL) on the host, which paces itself there.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncssh

from gossip_agent.runtime.client import ApiFailure, ApiUnavailable, Exchange

from .inventory import Host

CTL = "/opt/gossip-agent/venv/bin/gossip-agent ctl --json"
API_SOCKET = "/run/gossip-agent/api.sock"  # the gossip_agent role puts it here
API_TIMEOUT = 60  # seconds for one API answer (a dump of 100,000 entries is the largest)
COMMAND_TIMEOUT = 300  # seconds one remote command may take (a big churn batch is the longest)
T = TypeVar("T")


class FleetError(Exception):
    """A host could not be reached or a command failed; the message names the host."""


class ApiRefused(FleetError):
    """The agent answered with an error status: it validated the request and did nothing."""


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
        """`command` in a shell on `host`, as root: through `sudo -n` when the inventory logs in as
        another user (as on VMs and the systemd lab, whose user has passwordless sudo)."""
        if self.hosts[host].user != "root":
            command = f"sudo -n sh -c {shlex.quote(command)}"
        try:
            done = await self._connections[host].run(command, timeout=COMMAND_TIMEOUT)
        except (asyncssh.Error, OSError) as exc:
            raise FleetError(f"{host}: {command!r}: {exc}") from None
        if done.exit_status is None:  # the channel closed without one (a dropped link): unknown
            raise FleetError(f"{host}: {command!r}: no exit status ({done.exit_signal or 'channel closed'})")
        result = Result(host, done.exit_status, str(done.stdout or ""), str(done.stderr or ""))
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
        exchange = Exchange(method, path, body)
        try:
            async with asyncio.timeout(within):
                reader, writer = await self._connections[host].open_unix_connection(API_SOCKET, encoding=None)
                try:
                    writer.write(exchange.request)
                    answer = await reader.read()  # the agent closes after one answer
                finally:
                    writer.close()
            return exchange.answer(answer)
        except TimeoutError:
            raise FleetError(f"{host}: {method} {path}: no answer from the agent within {within:g} s") from None
        except (asyncssh.Error, OSError, ApiUnavailable) as exc:
            user = self.hosts[host].user
            hint = f" (logged in as {user}: is it in the agent's api_group?)" if user != "root" else ""
            raise FleetError(f"{host}: {method} {path}: no answer from the agent: {exc}{hint}") from None
        except ApiFailure as exc:
            raise ApiRefused(f"{host}: {method} {path}: HTTP {exc.status}: {exc}") from None

    async def clock_offsets(self, samples: int = 5) -> dict[str, tuple[float, float]]:
        """Per host (offset, error), seconds: its clock minus ours, read at the midpoint of the
        round trip with the smallest of `samples` (NTP's choice); the error is half that round
        trip. About 0 on the local lab, whose hosts share this machine's clock."""

        async def offset(name: str) -> tuple[float, float]:
            best = (0.0, float("inf"))
            for _ in range(samples):
                sent = time.time()
                remote = float((await self.run(name, "date +%s.%N")).stdout)
                back = time.time()
                if (back - sent) / 2 < best[1]:
                    best = (remote - (sent + back) / 2, (back - sent) / 2)
            return best

        return await self.each(offset)
