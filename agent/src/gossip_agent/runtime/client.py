"""Client of the control API: HTTP/1.1 over the agent's unix socket, with h11 as the server uses.

`call` is the synchronous client of `gossip-agent ctl` and the tests; the lab harness reaches the
same socket through SSH and runs an `Exchange` over that stream, so there is one way to speak to
an agent.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import h11

MAX_ANSWER = 256 * 1024 * 1024  # a dump of 100,000 entries is ~30 MB


class ApiUnavailable(Exception):
    """The agent's socket is missing, refuses connections, or the answer is not HTTP."""


class ApiFailure(Exception):
    """The agent answered with an error status; the message is the agent's own."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Exchange:
    """One request and its answer on one h11 client connection: `request` is what to send,
    `answer(data)` decodes everything the agent sent back before it closed."""

    def __init__(self, method: str, path: str, body: Any = None) -> None:
        payload = b"" if body is None else json.dumps(body).encode()
        headers = [("Host", "agent"), ("Connection", "close"), ("Content-Length", str(len(payload)))]
        if body is not None:
            headers.append(("Content-Type", "application/json"))
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
        events = (h11.Request(method=method, target=path, headers=headers), h11.Data(data=payload), h11.EndOfMessage())
        self.request = b"".join(self._conn.send(e) or b"" for e in events)

    def answer(self, data: bytes) -> Any:
        """The JSON (or, for /metrics, text) of the answer; ApiFailure for an error status."""
        self._conn.receive_data(data)
        self._conn.receive_data(b"")  # the agent closed after its answer
        status, content_type, body = 0, "", bytearray()
        try:
            while True:
                event = self._conn.next_event()
                if isinstance(event, h11.Response):
                    status = event.status_code
                    content_type = dict(event.headers).get(b"content-type", b"").decode("latin-1")
                elif isinstance(event, h11.Data):
                    body += event.data
                else:  # the end of the message, the connection closed, or nothing more to read
                    break
        except h11.RemoteProtocolError as exc:
            raise ApiUnavailable(f"the agent's answer is not HTTP: {exc}") from None
        if not status:
            raise ApiUnavailable(f"the agent closed without an answer ({len(data)} bytes)")
        if content_type.startswith("text/plain"):
            return bytes(body).decode()
        try:
            decoded = json.loads(body) if body else None
        except ValueError:
            raise ApiFailure(status, f"the agent sent a non-JSON answer: {bytes(body[:80])!r}") from None
        if status >= 400:
            message = decoded.get("error") if isinstance(decoded, dict) else str(decoded)
            raise ApiFailure(status, message or f"HTTP {status}")
        return decoded


def call(socket_path: str, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
    """One request; returns the decoded JSON (or text for /metrics)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        exchange = Exchange(method, path, body)
        sock.connect(socket_path)
        sock.sendall(exchange.request)
        chunks, size = [], 0
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_ANSWER:
                raise ApiUnavailable(f"the agent's answer exceeds {MAX_ANSWER} bytes")
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ApiUnavailable(f"no agent answers at {socket_path} ({exc.strerror})") from None
    except PermissionError:
        raise ApiUnavailable(f"no permission to use {socket_path} (the API socket is root-only)") from None
    except OSError as exc:
        raise ApiUnavailable(f"talking to the agent at {socket_path} failed: {exc}") from None
    finally:
        sock.close()
    return exchange.answer(b"".join(chunks))
