"""Local control API: HTTP/1.1 + JSON on a unix socket (mode 0600), and Prometheus /metrics.

HTTP is h11's (sans-IO, like our core): keep-alive, a cap on the request head and body, a timeout
for each read. Every malformed or invalid request gets a 4xx with a JSON body `{"error": "..."}`
that says what is wrong; nothing a client sends takes the agent down. The optional TCP listener
serves GET /metrics only, with a small head and no body.
"""

from __future__ import annotations

import asyncio
import grp
import ipaddress
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11

from ..core.errors import LocalProtocolError
from ..core.membership import State
from ..core.wire import MAX_KEY, MAX_NAME, MAX_VALUE
from .crypto import KeyringError, decode_key
from .daemon import Agent

log = logging.getLogger("gossip_agent.api")
MAX_BODY = 64 * 1024 * 1024
MAX_HEAD = 16 * 1024  # request line and headers
METRICS_MAX_HEAD = 2 * 1024
READ_TIMEOUT = 30.0  # seconds for each read of a request (and to wait for the next one)


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


@dataclass(frozen=True, slots=True)
class Status:
    """A handler's answer with a status other than 200."""

    status: int
    body: Any


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _require(body: Any, name: str, kind: type, where: str = "body") -> Any:
    if not isinstance(body, dict) or name not in body:
        raise ApiError(400, f"{where}: missing field {name!r}")
    value = body[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ApiError(400, f"{where}.{name}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _name(value: Any, what: str, limit: int = MAX_NAME) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ApiError(400, f"{what}: expected a non-empty string of at most {limit} characters")
    return value


def node_metrics(agent: Agent) -> bytes:
    """The Prometheus exposition, read from the node at scrape time: nothing is kept twice.

    prometheus_client is imported on the first scrape: it costs ~10 MB of RSS per agent.
    """
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    node = agent.node
    members = GaugeMetricFamily("gossip_members", "Cluster members by state", labels=["state"])
    counts = {s: 0 for s in State}
    for member in node.membership.members.values():
        counts[member.state] += 1
    for state, n in counts.items():
        members.add_metric([state.name.lower()], n)
    entries = GaugeMetricFamily("gossip_entries", "Visible entries per network", labels=["network"])
    queue = GaugeMetricFamily("gossip_queue_depth", "Cluster events waiting to be gossiped", labels=["scope"])
    queue.add_metric(["cluster"], len(node.cluster_queue))
    for name, state in node.networks.items():
        entries.add_metric([name], state.table.live)
    events = CounterMetricFamily("gossip_events", "Table events received", labels=["outcome"])
    dropped = CounterMetricFamily("gossip_dropped", "Inputs dropped", labels=["reason"])
    other = CounterMetricFamily("gossip_protocol", "Other protocol counters", labels=["counter"])
    for key, value in sorted(node.stats.items()):
        if key.startswith("events_"):
            events.add_metric([key[7:]], value)
        elif key.startswith("dropped_"):
            dropped.add_metric([key[8:]], value)
        else:
            other.add_metric([key], value)
    dataplane = agent.dataplane.stats()
    programming = CounterMetricFamily("gossip_dataplane", "VXLAN data plane operations", labels=["counter"])
    for key in ("programmed", "removed", "corrections", "errors", "bad_values"):
        programming.add_metric([key], dataplane[key])
    pending = GaugeMetricFamily("gossip_dataplane_pending", "Kernel entries waiting to be programmed")
    pending.add_metric([], dataplane["pending"])
    families = [members, entries, queue, events, dropped, other, programming, pending]

    class Snapshot:
        def collect(self) -> Any:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot())  # type: ignore[arg-type]
    data: bytes = generate_latest(registry)
    return data


class Api:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._servers: list[asyncio.Server] = []
        self.requests = 0  # answered on the control socket, and the CPU-seconds they took
        self.cpu_seconds = 0.0
        self.routes: dict[tuple[str, str], Callable[..., Any]] = {
            ("GET", "health"): self.health,
            ("GET", "members"): self.members,
            ("GET", "networks"): self.networks,
            ("POST", "networks"): self.attach,
            ("DELETE", "network"): self.detach,
            ("GET", "entries"): self.dump,
            ("POST", "entries"): self.put_entries,
            ("DELETE", "entries"): self.delete_entries,
            ("GET", "stats"): self.stats,
            ("GET", "keys"): self.keys,
            ("POST", "keys"): self.install_key,
            ("PUT", "keys"): self.use_key,
            ("DELETE", "keys"): self.remove_key,
            ("PUT", "faults"): self.set_fault,
            ("DELETE", "faults"): self.clear_faults,
        }

    async def start(self) -> None:
        path = self.agent.config.api_socket
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.unlink()  # a stale socket of a crashed agent
        old = os.umask(0o177)
        try:
            self._servers.append(await asyncio.start_unix_server(self._handle, str(path)))
        finally:
            os.umask(old)
        if self.agent.config.api_group is None:
            os.chmod(path, 0o600)
        else:  # its members may use the API, as the docker group may use docker's socket
            os.chown(path, -1, grp.getgrnam(self.agent.config.api_group).gr_gid)
            os.chmod(path, 0o660)
        if self.agent.config.metrics_addr is not None:
            host, port = self.agent.config.metrics_addr
            self._servers.append(await asyncio.start_server(self._handle_metrics_only, host, port))

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        self.agent.config.api_socket.unlink(missing_ok=True)

    # --- HTTP -------------------------------------------------------------------------------------

    async def _serve_http(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        answer: Callable[[str, str, bytes], tuple[int, bytes, str]],
        max_head: int,
        max_body: int,
    ) -> None:
        """Requests on one connection until the client closes it, misbehaves or idles."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        try:
            while True:
                try:
                    request = await self._read_request(conn, reader, max_head, max_body)
                except ApiError as exc:
                    if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        await self._send(conn, writer, exc.status, _error(str(exc)), "application/json")
                    return
                if request is None:
                    return
                writes = self.agent.writes
                status, body, ctype = answer(*request)
                if self.agent.writes != writes and self.agent.pending_commit is not None:
                    try:
                        await asyncio.shield(self.agent.pending_commit)  # shared by the whole group
                    except Exception as exc:  # noqa: BLE001 - sqlite3.Error above all: the writer must hear
                        # Applied and spreading; only its durability is in doubt (retried).
                        message = f"journal write failed: {exc}; the write is applied but not yet durable"
                        status, body, ctype = 500, _error(message), "application/json"
                await self._send(conn, writer, status, body, ctype)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return  # h11 says this connection cannot carry another request
                conn.start_next_cycle()
        except (TimeoutError, ConnectionError, OSError, h11.LocalProtocolError):
            return
        finally:
            writer.close()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, max_head: int, max_body: int
    ) -> tuple[str, str, bytes] | None:
        """(method, target, body) of the next request; None when the client closed the connection."""
        method = target = ""
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise ApiError(exc.error_status_hint, f"malformed request: {exc}") from None
            if event is h11.NEED_DATA:
                async with asyncio.timeout(READ_TIMEOUT):  # cheaper than wait_for: no task per read
                    data = await reader.read(65536)
                conn.receive_data(data)  # b"" is the client's EOF
                continue
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None
            if isinstance(event, h11.Request):
                # h11 bounds only a head still incomplete in its buffer; one that came whole is
                # measured here.
                if len(event.target) + sum(len(n) + len(v) for n, v in event.headers) > max_head:
                    raise ApiError(431, f"request head exceeds {max_head} bytes")
                method, target = event.method.decode("ascii").upper(), event.target.decode("latin-1")
                declared = dict(event.headers).get(b"content-length")
                if declared is not None and int(declared) > max_body:
                    raise ApiError(413, f"body of {int(declared)} bytes exceeds {max_body}")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > max_body:
                    raise ApiError(413, f"body exceeds {max_body} bytes")
            elif isinstance(event, h11.EndOfMessage):
                return method, target, bytes(body)

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, body: bytes,
                    ctype: str) -> None:  # fmt: skip
        headers = [("Content-Type", ctype), ("Content-Length", str(len(body)))]
        reason = HTTPStatus(status).phrase.encode()
        head = conn.send(h11.Response(status_code=status, headers=headers, reason=reason)) or b""
        writer.write(head + (conn.send(h11.Data(data=body)) or b"") + (conn.send(h11.EndOfMessage()) or b""))
        async with asyncio.timeout(READ_TIMEOUT):
            await writer.drain()

    def _answer(self, method: str, target: str, raw: bytes) -> tuple[int, bytes, str]:
        started = time.process_time()
        try:
            return self.dispatch(method, target, raw)
        except ApiError as exc:
            return exc.status, _error(str(exc)), "application/json"
        finally:
            # What answering costs the agent: a harness that polls must be able to show that it
            # is not what it measures (GET /stats, "api").
            self.requests += 1
            self.cpu_seconds += time.process_time() - started

    def _answer_metrics_only(self, method: str, target: str, raw: bytes) -> tuple[int, bytes, str]:
        if method == "GET" and urlsplit(target).path == "/metrics":
            return 200, node_metrics(self.agent), "text/plain; version=0.0.4"
        return 404, _error("only GET /metrics here"), "application/json"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve_http(reader, writer, self._answer, MAX_HEAD, MAX_BODY)

    async def _handle_metrics_only(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve_http(reader, writer, self._answer_metrics_only, METRICS_MAX_HEAD, 0)

    def dispatch(self, method: str, target: str, raw: bytes) -> tuple[int, bytes, str]:
        url = urlsplit(target)
        parts = [p for p in url.path.split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if parts == ["metrics"] and method == "GET":
            return 200, node_metrics(self.agent), "text/plain; version=0.0.4"
        # /networks/<id>/entries -> "entries" with network=<id>; /networks/<id> -> "network"
        args: dict[str, Any] = {}
        if len(parts) == 3 and parts[0] == "networks" and parts[2] == "entries":
            resource, args["network"] = "entries", parts[1]
        elif len(parts) == 2 and parts[0] == "networks":
            resource, args["network"] = "network", parts[1]
        elif len(parts) == 1:
            resource = parts[0]
        else:
            raise ApiError(404, f"no such resource {url.path}")
        handler = self.routes.get((method, resource))
        if handler is None:
            if any(r == resource for _, r in self.routes):
                raise ApiError(405, f"{method} not allowed on {url.path}")
            raise ApiError(404, f"no such resource {url.path}")
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise ApiError(400, "body is not valid JSON") from None
        try:
            result = handler(body=body, query=query, **args)
        except LocalProtocolError as exc:
            raise ApiError(409 if "not attached" not in str(exc) else 404, str(exc)) from None
        except KeyringError as exc:
            raise ApiError(400, str(exc)) from None
        except sqlite3.Error as exc:  # attach, detach: nothing was changed
            raise ApiError(500, f"journal write failed: {exc}") from None
        if isinstance(result, Status):
            return result.status, json.dumps(result.body).encode(), "application/json"
        return 200, json.dumps(result).encode(), "application/json"

    # --- resources ----------------------------------------------------------------------------------

    def health(self, **_: Any) -> Status:
        """503 "joining" until a seed has answered (or there is none to ask): a load balancer or
        a deploy that waits for ready must not count an agent that is alone."""
        node = self.agent.node
        ready = bool(node.stats.get("joined")) or not self.agent.other_seeds()
        joining = {} if ready else {"error": "joining: no seed has answered yet"}
        return Status(
            200 if ready else 503,
            {
                **joining,
                "status": "ready" if ready else "joining",
                "node": node.name,
                "address": f"{node.addr[0]}:{node.addr[1]}",
                "members_alive": node.membership.alive_count,
                "networks": sorted(node.networks),
                "pid": os.getpid(),
                "advertise_addr": self.agent.config.advertise_addr,
                "host_index": self.agent.config.host_index,
                "containers_per_host": self.agent.config.containers_per_host,
            },
        )

    def members(self, **_: Any) -> list[dict[str, Any]]:
        node = self.agent.node
        return [
            {"name": m.name, "address": f"{m.addr[0]}:{m.addr[1]}", "state": m.state.name.lower(),
             "incarnation": m.incarnation,
             "networks": sorted(n for (owner, n), r in node.attachments.items() if owner == m.name and r.attached)}
            for m in sorted(node.membership.members.values(), key=lambda m: m.name)
        ]  # fmt: skip

    def networks(self, **_: Any) -> list[dict[str, Any]]:
        agent, node = self.agent, self.agent.node
        return [
            {"network": name, "members": sorted([node.name, *node.peers_in(name)]),
             "entries": state.table.live,
             "digest": f"{state.table.digest:016x}",
             "vxlan_id": agent.network_params[name].vxlan_id, "subnet": agent.network_params[name].subnet,
             "dataplane": agent.dataplane.network_state(name)}
            for name, state in sorted(node.networks.items())
        ]  # fmt: skip

    def attach(self, body: Any, **_: Any) -> dict[str, Any]:
        network = _name(_require(body, "network", str), "network")
        vxlan_id = body.get("vxlan_id")
        if vxlan_id is not None and (isinstance(vxlan_id, bool) or not isinstance(vxlan_id, int)
                                     or not 1 <= vxlan_id < 2**24):  # fmt: skip
            raise ApiError(400, f"body.vxlan_id: {vxlan_id!r}: expected a VXLAN id 1-16777215")
        subnet = body.get("subnet")
        if subnet is not None:
            try:
                subnet = str(ipaddress.IPv4Network(subnet)) if isinstance(subnet, str) else None
            except ValueError:
                subnet = None
            if subnet is None:
                raise ApiError(400, f"body.subnet: {body['subnet']!r}: expected an IPv4 CIDR such as 198.19.1.0/24")
        self.agent.attach(network, vxlan_id, subnet)
        return {"attached": network}

    def detach(self, network: str, **_: Any) -> dict[str, Any]:
        self.agent.detach(network)
        return {"detached": network}

    def dump(self, network: str, query: dict[str, str], **_: Any) -> dict[str, Any]:
        state = self.agent.node.require_network(network)
        everything = query.get("all") in ("1", "true")
        entries = [
            {"table": e.event.table, "key": e.event.key, "value": e.event.value.decode("utf-8", "replace"),
             "owner": e.event.owner, "lamport": e.event.lamport, "origin_wall_ms": e.event.wall_ms,
             "seen_wall_ms": self.agent.to_wall_ms(e.seen_at), "deleted": e.event.deleted,
             "withdrawn": e.withdrawn}
            for e in state.table.entries.values()
            if everything or e.visible
        ]  # fmt: skip
        return {"network": network, "node": self.agent.node.name, "entries": entries}

    def _items(self, body: Any, with_value: bool) -> list[tuple[str, ...]]:
        items = _require(body, "entries", list)
        if not items:
            raise ApiError(400, "body.entries: empty list")
        result = []
        for i, item in enumerate(items):
            where = f"body.entries[{i}]"
            table = _name(_require(item, "table", str, where), f"{where}.table")
            key = _name(_require(item, "key", str, where), f"{where}.key", MAX_KEY)
            if with_value:
                value = _require(item, "value", str, where).encode()
                if len(value) > MAX_VALUE:
                    raise ApiError(400, f"{where}.value: {len(value)} bytes exceed {MAX_VALUE}")
                result.append((table, key, value))
            else:
                result.append((table, key))
        return result

    def put_entries(self, network: str, body: Any, **_: Any) -> dict[str, Any]:
        items = self._items(body, with_value=True)
        return {"written": self.agent.write(network, items)}  # type: ignore[arg-type]

    def delete_entries(self, network: str, body: Any, **_: Any) -> dict[str, Any]:
        items = self._items(body, with_value=False)
        return {"deleted": self.agent.delete(network, items)}  # type: ignore[arg-type]

    def stats(self, **_: Any) -> dict[str, Any]:
        node = self.agent.node
        return {
            "node": node.name,
            "lamport": node.clock.time,
            "incarnation": node.membership.incarnation,
            "cpu_seconds": round(time.process_time(), 3),  # of the agent process, user + system
            "api": {"requests": self.requests, "cpu_seconds": round(self.cpu_seconds, 3)},  # incl. this one
            "awareness": node.membership.awareness,  # Lifeguard local health: 0 is healthy
            "counters": dict(sorted(node.stats.items())),
            # Datagrams the kernel dropped because we did not read them in time (None: unknown).
            "udp_receive_drops": self.agent.transport.receive_drops(),
            "udp_receive_buffer": self.agent.transport.receive_buffer,  # bytes, as the kernel counts them
            "out_of_scope_by_network": dict(sorted(node.out_of_scope.items())),
            "queues": {"cluster": len(node.cluster_queue)},
            # Membership news pruned from a full queue (it travels by push-pull instead).
            "queues_pruned": {"cluster": node.cluster_queue.dropped},
            "dataplane": self.agent.dataplane.stats(),
        }

    def _keyring(self) -> Any:
        if self.agent.keyring is None:
            raise ApiError(409, "this agent runs without a keyring (set keyring_file)")
        return self.agent.keyring

    def keys(self, **_: Any) -> dict[str, Any]:
        fingerprints = self._keyring().fingerprints()
        return {"primary": fingerprints[0], "keys": fingerprints}

    def install_key(self, body: Any, **_: Any) -> dict[str, Any]:
        self._keyring().install(decode_key(_require(body, "key", str)))
        return self.keys()

    def use_key(self, body: Any, **_: Any) -> dict[str, Any]:
        self._keyring().use(decode_key(_require(body, "key", str)))
        return self.keys()

    def remove_key(self, body: Any, **_: Any) -> dict[str, Any]:
        self._keyring().remove(decode_key(_require(body, "key", str)))
        return self.keys()

    def set_fault(self, body: Any, **_: Any) -> dict[str, Any]:
        peer = _name(_require(body, "peer", str), "body.peer")
        drop = body.get("drop", 0.0)
        delay_ms = body.get("delay_ms", 0)
        if isinstance(drop, bool) or not isinstance(drop, int | float) or not 0 <= drop <= 1:
            raise ApiError(400, "body.drop: expected a probability between 0 and 1")
        if isinstance(delay_ms, bool) or not isinstance(delay_ms, int | float) or not 0 <= delay_ms <= 60_000:
            raise ApiError(400, "body.delay_ms: expected milliseconds between 0 and 60000")
        self.agent.set_fault(peer, float(drop), delay_ms / 1000)
        return {"peer": peer, "drop": drop, "delay_ms": delay_ms}

    def clear_faults(self, **_: Any) -> dict[str, Any]:
        self.agent.clear_faults()
        return {"faults": "cleared"}
